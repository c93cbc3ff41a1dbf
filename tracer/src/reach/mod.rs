//! Live reachability analysis (issue 13): what a stopped process's memory still points to.

pub mod glibc;
