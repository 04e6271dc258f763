//! `runner history`: a service's deploys.

use crate::cli::{Cli, HistoryArgs};
use crate::commands::CommandError;
use crate::commands::host::{Host, Open};
use crate::pipeline::history::{self};
use std::io::Write;

pub(crate) async fn history(cli: &Cli, args: &HistoryArgs) -> Result<(), CommandError> {
    let registry = Host::registry(cli, Open::Now)?;
    let records = history::list(&*registry, &args.service, args.limit).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for r in &records {
            writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default())?;
        }
        return Ok(());
    }
    if records.is_empty() {
        writeln!(out, "no deploys of {} recorded yet", args.service)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:20}  {:8}  {:12}  {:28}  {:6}  {:9}  {:>7}",
        "when", "kind", "who", "version", "color", "outcome", "time"
    )?;
    for r in &records {
        writeln!(
            out,
            "{:20}  {:8}  {:12}  {:28}  {:6}  {:9}  {:>6.1}s",
            r.started_at,
            r.kind,
            r.user,
            r.version,
            r.color,
            r.outcome,
            r.duration_ms as f64 / 1000.0
        )?;
    }
    Ok(())
}
