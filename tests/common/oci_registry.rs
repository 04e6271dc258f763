//! A real registry for tests: Debian's docker-registry on a free 127.0.0.1
//! port, optionally behind htpasswd auth, stopped (and its data removed)
//! on drop.

use super::free_port;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The user and password an authenticated test registry accepts.
pub const USER: &str = "ci";
pub const PASSWORD: &str = "s3cret-pw";
/// bcrypt of PASSWORD (docker-registry's htpasswd reads only bcrypt).
const PASSWORD_BCRYPT: &str = "$2b$12$FWDQZhvk4iMt5SeHV00r6.nOrEEXSRmXOvWtB20vnzjPFBnyI2dJu";

pub struct Registry {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    auth: bool,
}

impl Registry {
    /// An open registry.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A registry that wants USER / PASSWORD.
    pub fn start_with_auth() -> Self {
        Self::start_with(true)
    }

    fn start_with(auth: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Self {
            port: free_port(),
            child: None,
            dir,
            auth,
        };
        registry.spawn();
        registry
    }

    fn spawn(&mut self) {
        let port = self.port;
        let config = self.dir.path().join("config.yml");
        let mut text = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            self.dir.path().join("data").display()
        );
        if self.auth {
            let htpasswd = self.dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{USER}:{PASSWORD_BCRYPT}\n")).unwrap();
            text.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: runner-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(&config, text).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on 127.0.0.1:{port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `oci://127.0.0.1:PORT/PATH`.
    pub fn reference(&self, path: &str) -> String {
        format!("oci://{}/{path}", self.host())
    }

    /// Where the registry keeps blobs (to corrupt one).
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Stop it (a registry that is down); `restart` brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
