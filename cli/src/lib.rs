//! The `felix` command's library: everything the binary does beside
//! parsing its arguments, so the benchmarks (`felix-bench`) can start
//! brokers the same way.
//!
//! - [`run`]: a broker or control-plane node in this process until a
//!   signal (`felix broker`, `felix controlplane`, `felix dev`);
//! - [`devcluster`]: `felix dev --brokers N`, N broker processes;
//!   [`embedded`]: the one-node control plane `felix dev` runs;
//! - [`commands`]: the client commands (stream, cache, publish, subscribe,
//!   group) over [`profile`] (the client profile, the connection, hints);
//! - [`status`]: `felix cluster status` and `felix stream describe`;
//!   [`operator`] and [`bridge`]: commands of the control plane's
//!   operator API (rebalance, decommission, `felix bridge`);
//! - [`logtool`]: `felix log`; [`logs`]: the tracing subscriber;
//!   [`progress`]: bars on a terminal.

pub mod bridge;
pub mod commands;
pub mod devcluster;
pub mod embedded;
pub mod logs;
pub mod logtool;
pub mod operator;
pub mod profile;
pub mod progress;
pub mod run;
pub mod status;
