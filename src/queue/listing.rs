//! `mxguard queue`: what is waiting in the spool and why, in the spirit of Postfix's `mailq`.
//! Reads the spool without locking it: safe while the daemon runs, since message files are
//! written once and state logs are only appended to.

use super::spool::{RcptState, Spool};
use std::fmt::Write;
use std::path::Path;

pub fn listing(spool_dir: &Path) -> std::io::Result<String> {
    if !spool_dir.join("msg").is_dir() {
        return Ok("Mail queue is empty\n".into());
    }
    let spool = Spool::open_read_only(spool_dir);
    let ids = spool.scan()?;
    if ids.is_empty() {
        return Ok("Mail queue is empty\n".into());
    }
    let mut out =
        String::from("-Queue ID-------- --Size-- ----Arrival Time---- -Sender/Recipient-------\n");
    let mut total = 0usize;
    for id in &ids {
        let Ok((envelope, message)) = spool.load(id) else {
            let _ = writeln!(out, "{id} (unreadable)");
            continue;
        };
        total += message.len();
        let arrival = time::OffsetDateTime::from(envelope.arrival);
        let when = arrival
            .format(&time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{id} {:>8} {when}  <{}>",
            message.len(),
            envelope.mail_from
        );
        let states = spool.read_state(id).unwrap_or_default();
        for (i, rcpt) in envelope.recipients.iter().enumerate() {
            let state = states.iter().rev().find(|r| r.rcpt == i).map(|r| &r.state);
            match state {
                Some(RcptState::Done) => continue,
                Some(RcptState::Deferred {
                    reply: Some(reply),
                    attempts,
                    ..
                }) => {
                    let _ = writeln!(out, "{:>47}({reply}; {attempts} attempt(s))", "");
                }
                _ => {}
            }
            let _ = writeln!(out, "{:>49}<{}>", "", rcpt.address);
        }
    }
    let _ = writeln!(
        out,
        "-- {} Kbytes in {} Request(s).",
        total.div_ceil(1024),
        ids.len()
    );
    Ok(out)
}
