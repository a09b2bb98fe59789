//! The checks of a drill after its restore, one file per engine (a files drill has only the
//! built-in ones its runner records).

pub mod postgres;
pub mod qdrant;
pub mod redis;
