//! A hostile test guest: a stage written as an attacker would write it.
//!
//! `mode=calls` makes every host call named by a `call.LABEL=OP` setting, in
//! the order given, with its arguments from `arg.LABEL.NAME` settings. Each
//! call's result is reported as the output `LABEL`: `ok`, or
//! `KIND: MESSAGE` with the error the host returned (`denied`, `not-found`,
//! `conflict`, `invalid-config`, `failed`, `timeout`, `unavailable`), so the
//! stage itself succeeds and the test sees every refusal. Some calls add
//! outputs `LABEL.value`, `LABEL.keys`, `LABEL.id`, ...
//!
//! Argument values may hold characters a command line cannot: `{nul}`,
//! `{nl}`, `{tab}`, `{esc}` and `{del}` are replaced by those characters.
//!
//! Operations: `kv.get key`, `kv.put key value`, `kv.cas key value index`,
//! `kv.delete key`, `kv.list prefix`; `catalog.register service id [port]`,
//! `catalog.deregister service id`, `catalog.instances service`;
//! `docker.inspect|logs|start name`, `docker.kill name [signal]`,
//! `docker.remove name [force]`, `docker.stop|wait name [timeout]`,
//! `docker.run name image [labels k=v,k=v] [service] [command a b]`,
//! `docker.run-all names image [labels] [repeat]`,
//! `docker.tag source target`, `docker.pull|push image`,
//! `docker.build context tag`, `docker.list [pattern] [label]`;
//! `hooks.run name [config k=v,k=v]`; `log.huge bytes`, `log.lines n`, `print.lines n`;
//! `fs.symlink target link`, `fs.write path content`, `fs.read path`;
//! `journal.write step [details k=v,k=v] [count n] [size bytes]`,
//! `journal.read`, `journal.clear`; `template.render template destination`;
//! `proxy.switch proxy upstream [servers a:p,a:p] [file name] [template path]`.

use runner_sdk::{
    Context, Error, Guest, Outcome, catalog, config, docker, hooks, journal, kv, log, proxy,
    template,
};

struct Hostile;

/// One call's arguments.
struct Args<'a> {
    ctx: &'a Context,
    label: &'a str,
}

impl Args<'_> {
    fn opt(&self, name: &str) -> Option<String> {
        config(self.ctx)
            .get(&format!("arg.{}.{name}", self.label))
            .map(decode)
    }

    fn get(&self, name: &str) -> String {
        self.opt(name).unwrap_or_default()
    }

    fn num(&self, name: &str, default: u64) -> u64 {
        self.opt(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// `k=v,k=v` as pairs.
    fn pairs(&self, name: &str) -> Vec<(String, String)> {
        self.opt(name)
            .map(|v| {
                v.split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| match p.split_once('=') {
                        Some((k, v)) => (k.to_string(), v.to_string()),
                        None => (p.to_string(), String::new()),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn decode(v: &str) -> String {
    v.replace("{nul}", "\0")
        .replace("{nl}", "\n")
        .replace("{tab}", "\t")
        .replace("{esc}", "\x1b")
        .replace("{del}", "\x7f")
}

fn kind(error: &Error) -> String {
    let (kind, m) = match error {
        Error::Denied(m) => ("denied", m),
        Error::NotFound(m) => ("not-found", m),
        Error::Conflict(m) => ("conflict", m),
        Error::InvalidConfig(m) => ("invalid-config", m),
        Error::Failed(m) => ("failed", m),
        Error::Timeout(m) => ("timeout", m),
        Error::Unavailable(m) => ("unavailable", m),
    };
    // One output line per call: the test reads `LABEL=...` lines.
    format!("{kind}: {}", m.replace('\n', " "))
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Extra outputs of a successful call, as `(suffix, value)`.
type Extra = Vec<(&'static str, String)>;

fn container_extra(c: docker::Container) -> Extra {
    vec![
        ("id", c.id),
        ("name", c.name),
        ("image", c.image),
        ("running", c.running.to_string()),
    ]
}

fn fs_error(op: &str, path: &str, e: impl std::fmt::Display) -> Error {
    Error::Failed(format!("{op} {path}: {e}"))
}

/// Create a symlink `link` (a guest path inside a preopened directory)
/// holding `target`, through WASI directly: std has no stable symlink on WASI.
fn symlink(target: &str, link: &str) -> Result<(), Error> {
    let dirs = wasip2::filesystem::preopens::get_directories();
    let (dir, rest) = dirs
        .iter()
        .filter_map(|(d, guest)| {
            let base = guest.trim_end_matches('/');
            link.strip_prefix(base)
                .and_then(|r| r.strip_prefix('/'))
                .map(|r| (d, r.to_string(), base.len()))
        })
        .max_by_key(|(_, _, len)| *len)
        .map(|(d, r, _)| (d, r))
        .ok_or_else(|| fs_error("symlink", link, "not inside a preopened directory"))?;
    dir.symlink_at(target, &rest)
        .map_err(|e| fs_error("symlink", link, format!("{e:?}")))
}

fn call(op: &str, a: &Args) -> Result<Extra, Error> {
    Ok(match op {
        "kv.get" => match kv::get(&a.get("key"))? {
            Some(e) => vec![
                ("value", String::from_utf8_lossy(&e.value).into_owned()),
                ("found", "true".into()),
            ],
            None => vec![("found", "false".into())],
        },
        "kv.put" => vec![(
            "index",
            kv::put(&a.get("key"), a.get("value").as_bytes())?.to_string(),
        )],
        "kv.cas" => {
            let swapped = kv::cas(&a.get("key"), a.get("value").as_bytes(), a.num("index", 0))?;
            vec![("swapped", swapped.to_string())]
        }
        "kv.delete" => vec![("existed", kv::delete(&a.get("key"))?.to_string())],
        "kv.list" => {
            let keys: Vec<String> = kv::list(&a.get("prefix"))?
                .into_iter()
                .map(|e| e.key)
                .collect();
            vec![("keys", keys.join(","))]
        }
        "catalog.register" => {
            catalog::register(&catalog::Instance {
                id: a.get("id"),
                name: a.get("service"),
                address: a.opt("address").unwrap_or_else(|| "127.0.0.1".into()),
                port: a.num("port", 1) as u16,
                tags: vec![],
                healthy: true,
            })?;
            vec![]
        }
        "catalog.deregister" => {
            let existed = catalog::deregister(&a.get("service"), &a.get("id"))?;
            vec![("existed", existed.to_string())]
        }
        "catalog.instances" => {
            let ids: Vec<String> = catalog::instances(&a.get("service"), false)?
                .into_iter()
                .map(|i| i.id)
                .collect();
            vec![("ids", ids.join(","))]
        }
        "docker.inspect" => container_extra(docker::inspect(&a.get("name"))?),
        "docker.logs" => vec![("logs", one_line(&docker::logs(&a.get("name"), 10)?))],
        "docker.kill" => {
            let signal = a.opt("signal").unwrap_or_else(|| "KILL".into());
            docker::kill(&a.get("name"), &signal)?;
            vec![]
        }
        "docker.remove" => {
            docker::remove(&a.get("name"), a.opt("force").as_deref() != Some("false"))?;
            vec![]
        }
        "docker.stop" => {
            docker::stop(&a.get("name"), a.num("timeout", 0) as u32)?;
            vec![]
        }
        "docker.start" => container_extra(docker::start(&a.get("name"))?),
        "docker.wait" => {
            let code = docker::wait(&a.get("name"), a.num("timeout", 1) as u32)?;
            vec![("code", code.to_string())]
        }
        "docker.run" => {
            let spec = docker::RunSpec {
                name: a.get("name"),
                image: a.get("image"),
                env: vec![],
                labels: a.pairs("labels"),
                command: a
                    .opt("command")
                    .map(|c| c.split(' ').map(str::to_string).collect()),
                ports: a
                    .opt("port")
                    .and_then(|p| p.parse().ok())
                    .into_iter()
                    .collect(),
                restart: docker::RestartPolicy::No,
                service: a.opt("service"),
                tags: vec![],
            };
            container_extra(docker::run(&spec)?)
        }
        "docker.run-all" => {
            // `names` comma-separated, the whole list `repeat` times.
            let names: Vec<String> = a.get("names").split(',').map(str::to_string).collect();
            let specs: Vec<docker::RunSpec> = (0..a.num("repeat", 1))
                .flat_map(|_| names.clone())
                .map(|name| docker::RunSpec {
                    name,
                    image: a.get("image"),
                    env: vec![],
                    labels: a.pairs("labels"),
                    command: None,
                    ports: vec![],
                    restart: docker::RestartPolicy::No,
                    service: None,
                    tags: vec![],
                })
                .collect();
            let results: Vec<String> = docker::run_all(&specs)
                .iter()
                .map(|r| match r {
                    Ok(_) => "ok".to_string(),
                    Err(e) => kind(e).split(':').next().unwrap_or_default().to_string(),
                })
                .collect();
            vec![("results", results.join(","))]
        }
        "docker.tag" => {
            docker::tag(&a.get("source"), &a.get("target"))?;
            vec![]
        }
        "docker.pull" => {
            docker::pull(&a.get("image"))?;
            vec![]
        }
        "docker.push" => {
            docker::push(&a.get("image"))?;
            vec![]
        }
        "docker.build" => {
            let id = docker::build(&a.get("context"), None, &a.get("tag"), &[])?;
            vec![("id", id)]
        }
        "docker.list" => {
            let names: Vec<String> =
                docker::list(a.opt("pattern").as_deref(), a.opt("label").as_deref())?
                    .into_iter()
                    .map(|c| c.name)
                    .collect();
            vec![("names", names.join(","))]
        }
        "hooks.run" => {
            let outcome = hooks::run(&a.get("name"), &a.pairs("config"))?;
            let mut extra: Extra = vec![("message", one_line(&outcome.message))];
            let outputs: Vec<String> = outcome
                .outputs
                .iter()
                .map(|(k, v)| format!("{k}:{}", one_line(v)))
                .collect();
            extra.push(("outputs", outputs.join(";")));
            extra
        }
        "log.huge" => {
            // One log call carrying `bytes` bytes.
            let bytes = a.num("bytes", 20 << 20) as usize;
            let mut message = String::with_capacity(bytes);
            message.push_str("huge-start ");
            while message.len() < bytes {
                message.push_str("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
            }
            message.truncate(bytes);
            log::write(log::Level::Info, &message);
            vec![]
        }
        "log.lines" => {
            let n = a.num("n", 100_000);
            for i in 0..n {
                log::write(log::Level::Info, &format!("spam line {i}"));
            }
            vec![]
        }
        "print.lines" => {
            // The same flood through WASI stdout and stderr, alternating.
            let n = a.num("n", 100_000);
            for i in 0..n {
                if i % 2 == 0 {
                    println!("spam line {i}");
                } else {
                    eprintln!("spam line {i}");
                }
            }
            vec![]
        }
        "template.render" => {
            let rendered = template::render(
                &template::Source::File(a.get("template")),
                &a.get("destination"),
            )?;
            vec![("changed", rendered.changed.to_string())]
        }
        "journal.write" => {
            let mut details = a.pairs("details");
            // `count` details of `size` bytes each, to push past the limits.
            let size = a.num("size", 1) as usize;
            for i in 0..a.num("count", 0) {
                details.push((format!("k{i}"), "v".repeat(size)));
            }
            journal::write(journal::Phase::BeforeSwitch, &a.get("step"), &details)?;
            vec![]
        }
        "journal.read" => match journal::read()? {
            Some(entry) => vec![("step", entry.step), ("holder", one_line(&entry.holder))],
            None => vec![("found", "false".into())],
        },
        "journal.clear" => {
            journal::clear()?;
            vec![]
        }
        "proxy.switch" => {
            let servers = a
                .get("servers")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| {
                    let (address, port) = s.rsplit_once(':').unwrap_or((s, "0"));
                    proxy::Server {
                        address: address.to_string(),
                        port: port.parse().unwrap_or(0),
                    }
                })
                .collect();
            let file = a.opt("file").map(|name| proxy::UpstreamFile {
                name,
                template: template::Source::File(a.get("template")),
            });
            let report = proxy::switch(
                &a.get("proxy"),
                &proxy::Upstream {
                    name: a.get("upstream"),
                    servers,
                    file,
                },
            )?;
            vec![("reloaded", report.reloaded.to_string())]
        }
        "fs.symlink" => {
            symlink(&a.get("target"), &a.get("link"))?;
            vec![]
        }
        "fs.write" => {
            let path = a.get("path");
            std::fs::write(&path, a.get("content")).map_err(|e| fs_error("write", &path, e))?;
            vec![]
        }
        "fs.read" => {
            let path = a.get("path");
            let text = std::fs::read_to_string(&path).map_err(|e| fs_error("read", &path, e))?;
            vec![("content", one_line(&text))]
        }
        other => {
            return Err(Error::InvalidConfig(format!(
                "hostile: unknown operation \"{other}\""
            )));
        }
    })
}

impl Guest for Hostile {
    fn describe() -> runner_sdk::Description {
        runner_sdk::description("Test guest: hostile calls into every host function")
            .setting(runner_sdk::setting(
                "*",
                runner_sdk::SettingKind::Text,
                "any setting",
            ))
            .output("*", "any output")
    }

    fn run(ctx: Context) -> Result<Outcome, Error> {
        let cfg = config(&ctx);
        match cfg.require("mode")? {
            "calls" => {
                let mut outcome = runner_sdk::outcome("");
                let calls = cfg.with_prefix("call");
                for (label, op) in &calls {
                    let args = Args { ctx: &ctx, label };
                    match call(op, &args) {
                        Ok(extra) => {
                            outcome.outputs.push((label.to_string(), "ok".into()));
                            for (suffix, value) in extra {
                                outcome.outputs.push((format!("{label}.{suffix}"), value));
                            }
                        }
                        Err(e) => outcome.outputs.push((label.to_string(), kind(&e))),
                    }
                }
                outcome.message = format!("{} hostile calls made", calls.len());
                Ok(outcome)
            }
            other => Err(Error::InvalidConfig(format!(
                "hostile: unknown mode \"{other}\"; use mode=calls"
            ))),
        }
    }
}

runner_sdk::export!(Hostile);
