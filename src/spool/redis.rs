//! The Redis spool (see [`crate::spool`]).
