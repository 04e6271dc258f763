//! The `files` driver's switch: one atomic, verified step per proxy.
//!
//! Under the proxy-wide lock (`.runner-proxy.lock` in the config directory):
//! 1. repair what a switch that died left behind (its backup goes back live);
//! 2. render the operator's template, and refuse a render that does not name
//!    every server (a template for the wrong color);
//! 3. write it to a staging name, keep the live file as a hard-linked backup
//!    (`.NAME.runner-prev`, or an `.NAME.runner-absent` marker), rename the
//!    staged file over the live one, and run the proxy's check with it in place;
//! 4. reload, always: what counts is what the proxy serves, not whether the
//!    file changed;
//! 5. verify the live file is what was rendered, then drop the backup.
//!
//! A failed check or reload puts the backup back (and reloads once more
//! after a failed reload), so a broken render never stays live. A crash
//! anywhere leaves the backup, which the next switch on this proxy (of any
//! service) restores before it does anything: the proxy then serves what it
//! served before the dead switch, which is what that deploy's journal says.

use super::{ProxyConfig, check, reload_now};
use crate::bindings::PluginError;
use crate::bindings::runner::plugin::proxy;
use crate::caps::docker::DockerEngine;
use crate::caps::template::{TemplateCap, open_dir_inside};
use crate::faults::crash_point;
use cap_std::fs::Dir;
use std::io::Write;
use std::time::{Duration, Instant};

const LOCK_FILE: &str = ".runner-proxy.lock";
const PREV: &str = ".runner-prev";
const ABSENT: &str = ".runner-absent";
const STAGED: &str = ".runner-staged";

/// How long a switch waits for another switch on the same proxy.
const LOCK_WAIT: Duration = Duration::from_secs(120);

fn failed(proxy: &str, what: &str, e: impl std::fmt::Display) -> PluginError {
    PluginError::Failed(format!("proxy {proxy}: {what}: {e}"))
}

/// An upstream file name: one plain component the proxy's include glob sees.
fn check_file_name(proxy: &str, name: &str) -> Result<(), PluginError> {
    crate::names::upstream_file(name).map(|_| ()).map_err(|e| {
        PluginError::InvalidConfig(format!(
            "proxy {proxy}: upstream file must be a plain file name (letters, digits, . - _; not starting with .): {e}"
        ))
    })
}

/// The proxy-wide lock, held until dropped (the kernel frees it if we die).
struct ProxyLock(std::fs::File);

impl Drop for ProxyLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

async fn lock(proxy: &str, dir: &Dir) -> Result<ProxyLock, PluginError> {
    let file = dir
        .open_with(
            LOCK_FILE,
            cap_std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true),
        )
        .map_err(|e| failed(proxy, "opening its switch lock", e))?
        .into_std();
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(ProxyLock(file)),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(PluginError::Timeout(format!(
                    "proxy {proxy}: another switch held the proxy for over {}s",
                    LOCK_WAIT.as_secs()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(failed(proxy, "taking its switch lock", e));
            }
        }
    }
}

fn sync_dir(dir: &Dir) -> std::io::Result<()> {
    dir.open(".")?.sync_all()
}

/// Put back what switches that died left half-done; the files repaired.
pub(super) fn repair(proxy: &str, dir: &Dir) -> Result<Vec<String>, PluginError> {
    let mut repaired = Vec::new();
    let entries = dir
        .entries()
        .map_err(|e| failed(proxy, "listing its config directory", e))?;
    // Only regular files are ours: anything else under our names was put
    // there by someone else and is left alone.
    let names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for name in names {
        let Some(base) = name.strip_prefix('.') else {
            continue;
        };
        let io = |e| failed(proxy, &format!("repairing {base}"), e);
        if let Some(live) = base.strip_suffix(PREV) {
            put_back(dir, &name, live).map_err(io)?;
            repaired.push(live.to_string());
        } else if let Some(live) = base.strip_suffix(ABSENT) {
            match dir.remove_file(live) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
            dir.remove_file(&name).map_err(io)?;
            repaired.push(live.to_string());
        } else if base.ends_with(STAGED) {
            dir.remove_file(&name).map_err(io)?;
        }
    }
    if !repaired.is_empty() {
        sync_dir(dir).map_err(|e| failed(proxy, "syncing its config directory", e))?;
        tracing::warn!(
            "proxy {proxy}: restored {} left half-switched by a switch that died",
            repaired.join(", ")
        );
    }
    Ok(repaired)
}

/// Rename the backup `prev` over `live`. When the switch died between
/// linking the backup and renaming the staged file over the live one, both
/// are links to one file: rename(2) then does nothing, so the backup link is
/// removed by hand (the live file is the backup's content).
fn put_back(dir: &Dir, prev: &str, live: &str) -> std::io::Result<()> {
    dir.rename(prev, dir, live)?;
    match dir.remove_file(prev) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Put the backup of `file` back live.
fn restore(dir: &Dir, file: &str) -> std::io::Result<()> {
    let prev = format!(".{file}{PREV}");
    let absent = format!(".{file}{ABSENT}");
    if dir.exists(&prev) {
        put_back(dir, &prev, file)?;
    } else if dir.exists(&absent) {
        match dir.remove_file(file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        dir.remove_file(&absent)?;
    }
    sync_dir(dir)
}

/// Drop the backup of `file`: the switch is done.
fn commit(dir: &Dir, file: &str) -> std::io::Result<()> {
    for marker in [format!(".{file}{PREV}"), format!(".{file}{ABSENT}")] {
        match dir.remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    sync_dir(dir)
}

pub(super) async fn switch(
    config: &ProxyConfig,
    templates: &TemplateCap,
    docker: &DockerEngine,
    upstream: proxy::Upstream,
) -> Result<String, PluginError> {
    let proxy = config.name.as_str();
    let file = upstream.file.ok_or_else(|| {
        PluginError::InvalidConfig(format!(
            "proxy {proxy} reads config files: the switch needs the upstream's file and template"
        ))
    })?;
    check_file_name(proxy, &file.name)?;
    let granted = config
        .config_dir
        .clone()
        .ok_or_else(|| PluginError::InvalidConfig(format!("proxy {proxy} has no config_dir")))?;
    let destination = granted.path().join(&file.name);
    let content = templates
        .render_for_proxy(file.template, &destination, &granted)
        .await?;
    let missing: Vec<String> = upstream
        .servers
        .iter()
        .map(|s| format!("{}:{}", s.address, s.port))
        .filter(|server| !content.contains(server.as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(PluginError::Failed(format!(
            "proxy {proxy}: the rendered {} does not send {} to {}; nothing was switched. Check the template (does it read the right service?). Rendered:\n{}",
            file.name,
            upstream.name,
            missing.join(", "),
            content.chars().take(2000).collect::<String>()
        )));
    }
    let dir = open_dir_inside(std::slice::from_ref(&granted), granted.path()).map_err(|e| {
        failed(
            proxy,
            "opening its config directory (does it exist yet?)",
            e,
        )
    })?;
    let _lock = lock(proxy, &dir).await?;
    repair(proxy, &dir)?;

    let name = file.name.as_str();
    let staged = format!(".{name}{STAGED}");
    let write_staged = || -> std::io::Result<()> {
        let mut out = dir.create(&staged)?;
        out.write_all(content.as_bytes())?;
        out.sync_all()
    };
    write_staged().map_err(|e| failed(proxy, &format!("writing {staged}"), e))?;
    crash_point("proxy:staged");
    let go_live = || -> std::io::Result<()> {
        if dir.exists(name) {
            dir.hard_link(name, &dir, format!(".{name}{PREV}"))?;
        } else {
            dir.create(format!(".{name}{ABSENT}"))?.sync_all()?;
        }
        sync_dir(&dir)?;
        crash_point("proxy:linked");
        dir.rename(&staged, &dir, name)?;
        sync_dir(&dir)
    };
    if let Err(e) = go_live() {
        let _ = dir.remove_file(&staged);
        let _ = restore(&dir, name);
        return Err(failed(proxy, &format!("putting {name} live"), e));
    }
    crash_point("proxy:live");

    let mut output = String::new();
    let (ok, text) = match check(config).await {
        Ok(result) => result,
        Err(e) => {
            restore(&dir, name).map_err(|e| failed(proxy, "restoring the live file", e))?;
            return Err(e);
        }
    };
    if !ok {
        restore(&dir, name).map_err(|e| failed(proxy, "restoring the live file", e))?;
        return Err(PluginError::Failed(format!(
            "proxy {proxy}: the new {name} failed the proxy's check; the live file and the running proxy are as they were. {text}"
        )));
    }
    output.push_str(&text);
    crash_point("proxy:checked");

    if let Err(e) = reload_now(config, docker).await {
        // Back to the file the running proxy was started with, and make sure
        // the proxy runs it (a reload may have half-happened).
        restore(&dir, name).map_err(|e| failed(proxy, "restoring the live file", e))?;
        let again = reload_now(config, docker)
            .await
            .err()
            .map(|e| {
                format!(
                    " (reloading the restored config failed too: {})",
                    crate::bindings::describe(&e)
                )
            })
            .unwrap_or_default();
        return Err(match e {
            PluginError::Failed(m) => PluginError::Failed(format!("{m}; {name} restored{again}")),
            e => e,
        });
    }
    crash_point("proxy:reloaded");

    let live = dir
        .read_to_string(name)
        .map_err(|e| failed(proxy, &format!("reading {name} back"), e))?;
    if live != content {
        return Err(PluginError::Failed(format!(
            "proxy {proxy}: {name} changed while the switch held the proxy's lock; something else writes it"
        )));
    }
    commit(&dir, name).map_err(|e| failed(proxy, "dropping the backup", e))?;
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn open(path: &Path) -> Dir {
        Dir::open_ambient_dir(path, cap_std::ambient_authority()).unwrap()
    }

    #[test]
    fn repair_after_a_death_between_link_and_rename_drops_the_backup_link() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.conf"), "old").unwrap();
        std::fs::hard_link(
            d.path().join("a.conf"),
            d.path().join(".a.conf.runner-prev"),
        )
        .unwrap();
        std::fs::write(d.path().join(".a.conf.runner-staged"), "new").unwrap();
        // A directory under our names is not ours: left alone, no failure.
        std::fs::create_dir(d.path().join(".x.runner-prev")).unwrap();
        assert_eq!(repair("p", &open(d.path())).unwrap(), ["a.conf"]);
        assert_eq!(
            std::fs::read_to_string(d.path().join("a.conf")).unwrap(),
            "old"
        );
        assert!(!d.path().join(".a.conf.runner-prev").exists());
        assert!(!d.path().join(".a.conf.runner-staged").exists());
        assert!(d.path().join(".x.runner-prev").is_dir());
        // The next switch can link its backup again.
        std::fs::hard_link(
            d.path().join("a.conf"),
            d.path().join(".a.conf.runner-prev"),
        )
        .unwrap();
    }

    #[test]
    fn file_names_are_plain() {
        assert!(check_file_name("p", "books-ms.conf").is_ok());
        for bad in ["", ".hidden", "a/b", "../x", "x y", "a\nb"] {
            assert!(check_file_name("p", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repair_puts_the_backup_back_and_drops_staged_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.conf"), "new").unwrap();
        std::fs::write(d.path().join(".a.conf.runner-prev"), "old").unwrap();
        std::fs::write(d.path().join("b.conf"), "created").unwrap();
        std::fs::write(d.path().join(".b.conf.runner-absent"), "").unwrap();
        std::fs::write(d.path().join(".c.conf.runner-staged"), "half").unwrap();
        std::fs::write(d.path().join("c.conf"), "keep").unwrap();
        let mut repaired = repair("p", &open(d.path())).unwrap();
        repaired.sort();
        assert_eq!(repaired, ["a.conf", "b.conf"]);
        assert_eq!(
            std::fs::read_to_string(d.path().join("a.conf")).unwrap(),
            "old"
        );
        assert!(!d.path().join("b.conf").exists());
        assert_eq!(
            std::fs::read_to_string(d.path().join("c.conf")).unwrap(),
            "keep"
        );
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }
}
