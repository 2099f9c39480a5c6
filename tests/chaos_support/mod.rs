//! Support for the chaos and soak suites: a seeded fault-injecting proxy, a
//! small PRNG, call outcome accounting and process figures from /proc.
#![allow(dead_code)]

pub mod alloc;
pub mod echo;
pub mod proc;
pub mod proxy;
pub mod rng;
pub mod tally;
