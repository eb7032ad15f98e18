//! The `p2pfs` binary: parse arguments, run, exit.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    p2pfs::cli::run(p2pfs::cli::Args::parse())
}
