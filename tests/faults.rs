//! Faults during a deploy leave nothing half-done: a broken upstream
//! template never reaches the live file (so other services on the same
//! nginx keep deploying), a crash in one service's switch is repaired, not
//! published, by the next switch of another service on that nginx, and
//! losing the Docker engine mid-deploy is a failed deploy (exit 1) that the
//! next run finishes, never an exit 0 with both colors running.

use crate::common;

use crate::common::deployment::{Deployment, sh};
use crate::common::require_docker;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A second service, `<first>x`, behind the first deployment's nginx at
/// `/<second>/api/v1/books`, using the first one's images.
struct Second<'a> {
    d: &'a Deployment,
    service: String,
}

impl<'a> Second<'a> {
    fn add(d: &'a Deployment) -> Self {
        let service = format!("{}x", d.service);
        let nginx = d.work.join("nginx");
        std::fs::write(
            nginx.join(format!("includes/{service}.conf")),
            format!(
                "location /{service}/api/v1/books {{\n    proxy_pass http://{service}/api/v1/books;\n}}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            nginx.join(format!("upstreams/{service}.conf")),
            format!("upstream {service} {{\n    server 127.0.0.1:1 down;\n}}\n"),
        )
        .unwrap();
        for color in ["blue", "green"] {
            std::fs::write(
                d.work.join(format!("templates/{service}-{color}.ctmpl")),
                format!(
                    "upstream {service} {{\n {{{{range service \"{service}-{color}\" \"any\"}}}}\n server {{{{.Address}}}}:{{{{.Port}}}};\n {{{{end}}}}\n}}\n"
                ),
            )
            .unwrap();
        }
        // A template that renders config nginx rejects.
        std::fs::write(
            d.work.join(format!("templates/{service}-broken.ctmpl")),
            format!(
                "upstream {service} {{\n {{{{range service \"{service}-blue\" \"any\"}}}}\n server {{{{.Address}}}}:{{{{.Port}}}} no_such_parameter;\n {{{{end}}}}\n {{{{range service \"{service}-green\" \"any\"}}}}\n server {{{{.Address}}}}:{{{{.Port}}}} no_such_parameter;\n {{{{end}}}}\n}}\n"
            ),
        )
        .unwrap();
        sh(Command::new("chmod").args(["-R", "a+rwX"]).arg(&nginx));
        sh(Command::new("./nginx-reload")
            .args(["nginx/", "nginx.conf"])
            .current_dir(&d.work));
        Self { d, service }
    }

    fn deploy(&self, tag: &str, template: &str) -> common::Output {
        let s = &self.service;
        self.d
            .stage(s)
            .allow_kv(&format!("{s}/"))
            .allow_service(&format!("{s}-*"))
            .allow_container(&format!("{s}-*"))
            .config("image", format!("{}:{tag}", self.d.service))
            .config("upstream_template", format!("templates/{template}"))
            .config("proxy_url", format!("http://127.0.0.1:{}/{s}", self.d.port))
            .config("drain", "0s")
            .config("health_timeout", "5s")
            .config("post_hook", "none")
            .run()
    }

    fn serving(&self) -> String {
        let url = format!(
            "http://127.0.0.1:{}/{}/api/v1/books",
            self.d.port, self.service
        );
        let body = sh(Command::new("curl").args(["-s", "--max-time", "5", &url]));
        let doc: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"));
        doc["version"].as_str().unwrap_or_default().to_string()
    }
}

#[test]
fn services_sharing_an_nginx_never_publish_each_others_broken_or_half_done_switch() {
    require_docker!();
    let d = Deployment::start("shared", false);
    let second = Second::add(&d);
    d.deploy("v1").expect_code(0);
    d.deploy("v2").expect_code(0);
    second
        .deploy("v1", &format!("{}-{{color}}.ctmpl", second.service))
        .expect_code(0);
    assert_eq!(second.serving(), "v1");

    // The first service's deploy dies with its new upstream file live but
    // nginx not reloaded.
    let killed = d.bluegreen_with(
        &["-c", &format!("image={}:v3", d.service)],
        &[("RUNNER_TEST_CRASH_AT", "proxy:live")],
    );
    assert_eq!(killed.signal, Some(9), "{}", killed.stderr);
    // The second service deploys on the same nginx: its switch first puts
    // back the first service's file, so nginx never serves the dead
    // deploy's candidate while the first service's color says green.
    second
        .deploy("v2", &format!("{}-{{color}}.ctmpl", second.service))
        .expect_code(0)
        .stderr_has("restored");
    assert_eq!(second.serving(), "v2");
    d.wait_serving("v2");
    assert_eq!(d.color(), "green");

    // A broken template for the second service: the check fails, the live
    // file and nginx stay as they were, and the first service still deploys.
    // (Switching back renders the same broken template, so that fails too;
    // the journal keeps the deploy for the next run.)
    second
        .deploy("v1", &format!("{}-broken.ctmpl", second.service))
        .expect_code(1)
        .stderr_has("failed the proxy's check")
        .stderr_has("the live file and the running proxy are as they were");
    assert_eq!(second.serving(), "v2");
    let live = std::fs::read_to_string(
        d.work
            .join(format!("nginx/upstreams/{}.conf", second.service)),
    )
    .unwrap();
    assert!(!live.contains("no_such_parameter"), "{live}");
    d.bluegreen(&["-c", "action=recover"])
        .expect_code(0)
        .stderr_has("recovering");
    d.deploy("v3").expect_code(0);
    d.wait_serving("v3");
    assert_eq!(second.serving(), "v2");
    // With the template fixed, the second service's next deploy recovers
    // the failed one first, then deploys.
    second
        .deploy("v1", &format!("{}-{{color}}.ctmpl", second.service))
        .expect_code(0)
        .stderr_has("recovering");
    assert_eq!(second.serving(), "v1");
}

/// A TCP front for the Docker engine's socket that goes down on demand:
/// once armed, the request after the next container start is cut and every
/// later connection refused, as when the engine (or the network to it) dies.
struct DockerFront {
    port: u16,
    armed: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
}

impl DockerFront {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicBool::new(false));
        let (a, dn) = (armed.clone(), down.clone());
        let started = Arc::new(AtomicBool::new(false));
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if dn.load(Ordering::SeqCst) {
                    continue; // dropped: connection closed at once
                }
                let Ok(engine) = std::os::unix::net::UnixStream::connect("/var/run/docker.sock")
                else {
                    continue;
                };
                let (a, dn, st) = (a.clone(), dn.clone(), started.clone());
                let (mut c_read, mut e_write) =
                    (client.try_clone().unwrap(), engine.try_clone().unwrap());
                let (mut e_read, mut c_write) = (engine, client);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    loop {
                        let n = match c_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if dn.load(Ordering::SeqCst)
                            || (a.load(Ordering::SeqCst) && st.load(Ordering::SeqCst))
                        {
                            dn.store(true, Ordering::SeqCst);
                            let _ = c_read.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]);
                        if a.load(Ordering::SeqCst)
                            && text.starts_with("POST ")
                            && text.lines().next().is_some_and(|l| l.contains("/start "))
                        {
                            st.store(true, Ordering::SeqCst);
                        }
                        if e_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = e_write.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut e_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Self { port, armed, down }
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn losing_docker_after_the_candidate_starts_fails_the_deploy_and_recovery_finishes_it() {
    require_docker!();
    let d = Deployment::start("dockerlost", false);
    let front = DockerFront::start();
    let url = front.url();
    let via_front = |args: &[&str]| {
        let mut full = vec!["--docker-host", url.as_str()];
        full.extend_from_slice(args);
        d.bluegreen(&full)
    };
    via_front(&["-c", &format!("image={}:v1", d.service)]).expect_code(0);
    via_front(&["-c", &format!("image={}:v2", d.service)]).expect_code(0);
    front.armed.store(true, Ordering::SeqCst);
    let out = via_front(&["-c", &format!("image={}:v3", d.service)]);
    assert!(front.down.load(Ordering::SeqCst), "Docker never went down");
    let out = out.expect_code(1);
    assert!(
        !(out.stderr.contains("could not stop") && out.stderr.contains("kept for rollback")),
        "both \"could not stop\" and \"stopped\":\n{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("runner recover {}", d.service)),
        "{}",
        out.stderr
    );
    // The old color kept serving (or the candidate passed and serves); the
    // journal remembers the deploy.
    assert!(d.status().contains("interrupted deploy"), "{}", d.status());

    // Docker is back: the next run finishes or undoes it.
    front.down.store(false, Ordering::SeqCst);
    front.armed.store(false, Ordering::SeqCst);
    let recovered = d
        .bluegreen(&["-c", "action=recover"])
        .expect_code(0)
        .stderr_has("recovering");
    let color = d.color();
    wait_for("one color serving", || d.running().len() == 1);
    assert_eq!(d.running(), [d.name(&color)], "{}", recovered.stderr);
    assert_eq!(d.catalog(), [d.name(&color)]);
    assert!(!d.status().contains("interrupted deploy"));
}
