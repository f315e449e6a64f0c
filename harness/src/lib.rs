//! Process-level pieces the tests and the lab bench share: child processes in their own group
//! (logged, stopped on drop), bounded waits, loopback HTTP, `/proc` CPU time, tool lookup, and
//! the command lines of Envoy, VictoriaMetrics and vmagent. Never a dependency of the server.

pub mod cpu;
pub mod envoy;
pub mod http;
pub mod process;
pub mod tools;
pub mod victoria;
pub mod wait;

pub use cpu::{cpu_seconds, group_cpu_seconds, machine_busy_seconds};
pub use http::{free_port, get_ok, http, http_get, Method};
pub use process::{tail, Process};
pub use tools::require_tool;
pub use wait::{wait_for, wait_for_every, wait_ok};
