//! The `runner` binary: parse the command line, run the command, map the
//! result to an exit status (0 ok, 1 stage failed, 2 usage/config, 3 fault).

use clap::Parser;
use runner::cli::Command;
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer};

mod term;

// Loading a precompiled component is dominated by small allocations while
// decoding its metadata; mimalloc makes plugin start measurably faster.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli =
        runner::cli::Cli::parse_from(runner::cli::consul_template_habits(std::env::args_os()));
    let verbose = cli.verbose;
    let default_filter = match verbose {
        0 => "info",
        1 => "debug,cranelift=info,wasmtime=info",
        _ => "trace",
    };
    // Pipelines in CI log plain timestamped lines; elsewhere time is noise.
    let pipeline = matches!(
        cli.command,
        Command::Run(_) | Command::Rollback(_) | Command::Promote(_) | Command::Recover(_)
    );
    let timestamps =
        pipeline && (!std::io::stderr().is_terminal() || std::env::var_os("CI").is_some());
    let json = match &cli.command {
        Command::Run(args) => args.options.json,
        Command::Rollback(args) | Command::Promote(args) | Command::Recover(args) => {
            args.options.json
        }
        _ => false,
    };
    let reporter = term::reporter(term::OutputMode::detect(json));
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // The stage span only tells the reporter whose log a line is; the log
    // lines themselves stay as they are, even at trace level.
    let filter = match format!("{}=off", runner::pipeline::report::STAGE_SPAN_TARGET).parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let log = tracing_subscriber::fmt::layer()
        .with_writer(term::LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let log = if timestamps {
        log.boxed()
    } else {
        log.without_time().boxed()
    };
    tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(term::PluginEvents::new(reporter.clone()))
        .init();

    let tokio = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match tokio.block_on(runner::commands::run(cli, reporter)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(detail) = e.detail() {
                if verbose > 0 {
                    eprintln!("{detail}");
                } else {
                    eprintln!("(run with -v for the wasm backtrace)");
                }
            }
            ExitCode::from(e.exit_code())
        }
    }
}
