//! Per-connection command counts for the `disconnect from …` log line, in Postfix's shape:
//! `ehlo=1 mail=1 rcpt=1/2 data=1 quit=1 commands=5/6`, where `ok/total` appears when some
//! of a command's replies were errors.

use std::fmt;

#[derive(Debug, Default)]
pub struct Stats {
    /// `(command, accepted, total)` in the order first seen.
    counts: Vec<(&'static str, u32, u32)>,
}

impl Stats {
    pub fn record(&mut self, command: &'static str, accepted: bool) {
        let index = match self.counts.iter().position(|(c, _, _)| *c == command) {
            Some(i) => i,
            None => {
                self.counts.push((command, 0, 0));
                self.counts.len() - 1
            }
        };
        let entry = &mut self.counts[index];
        entry.1 += u32::from(accepted);
        entry.2 += 1;
    }
}

fn pair(f: &mut fmt::Formatter<'_>, name: &str, ok: u32, total: u32) -> fmt::Result {
    if ok == total {
        write!(f, "{name}={ok}")
    } else {
        write!(f, "{name}={ok}/{total}")
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mut ok, mut total) = (0, 0);
        for (name, good, all) in &self.counts {
            pair(f, name, *good, *all)?;
            f.write_str(" ")?;
            ok += good;
            total += all;
        }
        pair(f, "commands", ok, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postfix_shape() {
        let mut s = Stats::default();
        for (c, ok) in [
            ("ehlo", true),
            ("mail", true),
            ("rcpt", true),
            ("rcpt", false),
            ("quit", true),
        ] {
            s.record(c, ok);
        }
        assert_eq!(s.to_string(), "ehlo=1 mail=1 rcpt=1/2 quit=1 commands=4/5");
        assert_eq!(Stats::default().to_string(), "commands=0");
    }
}
