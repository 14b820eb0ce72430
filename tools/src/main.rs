//! `corewal`: the load generator and the tools around a corewal data directory.
#![deny(unsafe_code)]

mod compare;
mod data_dir;
mod footprint;
mod host;
mod inspect;
mod load;
mod plot;
mod probe;
mod readers;
mod recover_bench;
mod subscribers;

use clap::{Parser, Subcommand};

/// corewal's bundled tools.
#[derive(Parser)]
#[command(
    name = "corewal",
    version,
    about = "Load generator and tools for corewal data directories"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive appends against an engine and report throughput, latency and CPU.
    Load(Box<load::LoadArgs>),
    /// Write a data set, drop the page cache, reopen it and report recovery speed,
    /// registration latency during recovery and memory.
    RecoverBench(recover_bench::RecoverBenchArgs),
    /// Measure the memory an idle channel and a live record's index cost
    /// (registers a million channels by default).
    Footprint(footprint::FootprintArgs),
    /// Measure the device under a directory the way the engine uses it and print the
    /// configuration it suggests.
    Probe(probe::ProbeArgs),
    /// Print two `load --json` results side by side with ratios.
    Compare(compare::CompareArgs),
    /// Draw `load --report-file` reports (throughput, latency, WAL bytes on disk, RSS
    /// over time) as an SVG picture.
    Plot(plot::PlotArgs),
    /// Read-only summary of a data directory: shards, segments, channels,
    /// damage; or, with --dump, every commit and entry.
    Inspect(inspect::InspectArgs),
    /// Check every checksum and structural rule of a data directory without
    /// changing it. Exit status 0: sound; 1: damaged; 2: could not be read.
    Verify(inspect::VerifyArgs),
}

fn main() {
    let cli = Cli::parse();
    let is_verify = matches!(cli.command, Command::Verify(_));
    let result = match cli.command {
        Command::Load(args) => load::run(*args).map(|()| 0),
        Command::RecoverBench(args) => recover_bench::run(args).map(|()| 0),
        Command::Footprint(args) => footprint::run(args).map(|()| 0),
        Command::Probe(args) => probe::run(args).map(|()| 0),
        Command::Compare(args) => compare::run(args).map(|()| 0),
        Command::Plot(args) => plot::run(args).map(|()| 0),
        Command::Inspect(args) => inspect::run_inspect(args).map(|()| 0),
        Command::Verify(args) => inspect::run_verify(args),
    };
    match result {
        Ok(0) => {}
        Ok(code) => std::process::exit(code),
        // Output cut short by a closed pipe (`| head`) is not a failure.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {}
        Err(e) => {
            eprintln!("corewal: error: {e}");
            // 2 for `verify`, whose 1 means damage found; 1 elsewhere.
            std::process::exit(if is_verify { 2 } else { 1 });
        }
    }
}
