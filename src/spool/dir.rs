//! The embedded spool (see [`crate::spool`]).
