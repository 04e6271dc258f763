//! The deploy journal (the host's `journal` interface) and recovery: what a
//! deploy that died was doing, and finishing or undoing it.

use crate::Settings;
use crate::steps::{ensure_running, info, put_or_delete, remove_color, stop_color, switch_proxy};
use runner_sdk::journal::{self, Phase};
use runner_sdk::{Error, kv};

/// What happens to a candidate that does not make it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Undo {
    /// A new container (deploy, promote): removed.
    Remove,
    /// The kept previous version (rollback): stopped again, still kept.
    Stop,
}

/// What a deploy is about to do, written before each step.
pub(crate) struct Intent {
    pub(crate) action: &'static str,
    /// The color serving before this deploy ("" for a first deploy).
    pub(crate) known_good: String,
    /// The color being brought in.
    pub(crate) candidate: String,
    pub(crate) image: String,
    pub(crate) undo: Undo,
}

impl Intent {
    pub(crate) fn write(&self, phase: Phase, step: &str) -> Result<(), Error> {
        let details = [
            ("action", self.action),
            ("known-good", self.known_good.as_str()),
            ("candidate", self.candidate.as_str()),
            ("image", self.image.as_str()),
            (
                "undo",
                match self.undo {
                    Undo::Remove => "remove",
                    Undo::Stop => "stop",
                },
            ),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        journal::write(phase, step, &details)
    }
}

pub(crate) fn clear() -> Result<(), Error> {
    journal::clear()
}

fn color_detail(entry: &journal::Entry, key: &str, may_be_empty: bool) -> Result<String, Error> {
    let value = entry
        .details
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    match value.as_str() {
        "blue" | "green" => Ok(value),
        "" if may_be_empty => Ok(value),
        other => Err(Error::Failed(format!(
            "the deploy journal's {key} is \"{other}\", not a color: runner cannot tell what the dead deploy did; check the service by hand (`runner status`)"
        ))),
    }
}

/// The candidate of a deploy that did not make it: removed or stopped, and
/// no longer waiting for promotion.
pub(crate) fn undo_candidate(s: &Settings, candidate: &str, undo: Undo) -> Result<(), Error> {
    match undo {
        Undo::Remove => remove_color(s, candidate)?,
        Undo::Stop => stop_color(s, candidate)?,
    }
    if let Some(pending) = kv::get(&s.promotion_key())?
        && pending.value == candidate.as_bytes()
    {
        kv::delete(&s.promotion_key())?;
    }
    Ok(())
}

/// Back to the last known-good color: proxy, color, candidate gone.
pub(crate) fn back_to(
    s: &Settings,
    known_good: &str,
    candidate: &str,
    undo: Undo,
) -> Result<(), Error> {
    if !known_good.is_empty() {
        let ports = ensure_running(s, known_good)?;
        switch_proxy(s, known_good, &ports)?;
    }
    put_or_delete(&s.color_key(), known_good)?;
    undo_candidate(s, candidate, undo)
}

/// The candidate passed everything: the old color stops and is kept for rollback.
pub(crate) fn finish(s: &Settings, old: &str, new: &str) -> Result<(), Error> {
    put_or_delete(&s.color_key(), new)?;
    if !old.is_empty() {
        stop_color(s, old)?;
        info(&format!("stopped {} (kept for rollback)", s.container(old)));
    }
    put_or_delete(&s.previous_key(), old)
}

/// Finish or undo the deploy the journal holds, if one died; what was done.
pub(crate) fn recover(s: &Settings) -> Result<Option<String>, Error> {
    let Some(entry) = journal::read()? else {
        return Ok(None);
    };
    let action = entry
        .details
        .iter()
        .find(|(k, _)| k == "action")
        .map(|(_, v)| v.as_str())
        .unwrap_or("deploy");
    let known_good = color_detail(&entry, "known-good", true)?;
    let candidate = color_detail(&entry, "candidate", false)?;
    // An entry that cannot describe a blue-green deploy is not acted on:
    // the two colors differ, and the stored color is one of them.
    let (stored, _) = crate::steps::read_color(s)?;
    if known_good == candidate
        || (!stored.is_empty() && stored != known_good && stored != candidate)
    {
        return Err(Error::Failed(format!(
            "the deploy journal of {} (known-good \"{known_good}\", candidate \"{candidate}\") does not match the stored color \"{stored}\"; runner will not act on it: check the service by hand (`runner status`)",
            s.service
        )));
    }
    let undo = match entry.details.iter().find(|(k, _)| k == "undo") {
        Some((_, v)) if v == "stop" => Undo::Stop,
        _ => Undo::Remove,
    };
    runner_sdk::warn(&format!(
        "a {action} of {} died at step {} ({}); recovering",
        s.service, entry.step, entry.holder
    ));
    let name = s.container(&candidate);
    let serving = if known_good.is_empty() {
        "nothing (first deploy)".to_string()
    } else {
        known_good.clone()
    };
    let message = match entry.phase {
        Phase::BeforeSwitch => {
            undo_candidate(s, &candidate, undo)?;
            format!(
                "recovered the {action} that died at {}: {name} {}; {serving} keeps serving",
                entry.step,
                if undo == Undo::Remove {
                    "removed"
                } else {
                    "stopped"
                }
            )
        }
        Phase::Switching => {
            back_to(s, &known_good, &candidate, undo)?;
            format!(
                "recovered the {action} that died at {}: switched back to {serving}, color restored, {name} {}",
                entry.step,
                if undo == Undo::Remove {
                    "removed"
                } else {
                    "stopped"
                }
            )
        }
        Phase::Finishing => {
            finish(s, &known_good, &candidate)?;
            format!(
                "recovered the {action} that died at {}: finished, {name} serves",
                entry.step
            )
        }
    };
    clear()?;
    info(&message);
    Ok(Some(message))
}
