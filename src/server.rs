//! `mxguard serve`: opens the spool, starts the listeners and the delivery scheduler, and
//! shuts them down in order.
