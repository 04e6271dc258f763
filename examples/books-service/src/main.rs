//! The books service from the seeds: `GET /api/v1/books`, `PUT /api/v1/books`
//! (`{_id, title, author, description}`), and `GET /health`, with the version
//! from `VERSION` in an `X-Version` header and in every JSON body.
//!
//! Configured by environment, as in the seeds: `PORT` (default 8080),
//! `VERSION` (default `dev`). For failure tests, `BROKEN=exit` exits at
//! once with code 3, `BROKEN=health` makes
//! `/health` answer 500, `BROKEN=books` makes `/api/v1/books` answer 500, and
//! `BROKEN=proxied` makes `/api/v1/books` answer 500 only when reached through
//! a proxy (a `Host` other than an address): it passes tests against its own
//! address and fails behind nginx. `HEALTHY_AFTER_MS=N` makes `/health`
//! answer 503 for the first N ms (a slow start). `books-service probe` is
//! its own health check (exit 0 when `/health` answers 200).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use tiny_http::{Header, Method, Request, Response, Server};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Book {
    #[serde(rename = "_id")]
    id: String,
    title: String,
    #[serde(default)]
    author: String,
    #[serde(default)]
    description: String,
}

struct App {
    version: String,
    broken: String,
    /// `/health` answers 503 until then.
    healthy_at: std::time::Instant,
    books: Mutex<BTreeMap<String, Book>>,
}

fn json(status: u16, version: &str, body: serde_json::Value) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut response = Response::from_string(body.to_string()).with_status_code(status);
    for (k, v) in [("Content-Type", "application/json"), ("X-Version", version)] {
        if let Ok(h) = Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            response.add_header(h);
        }
    }
    response
}

impl App {
    fn handle(&self, request: &mut Request) -> Response<std::io::Cursor<Vec<u8>>> {
        let v = self.version.as_str();
        let path = request.url().split('?').next().unwrap_or("").to_string();
        match (request.method(), path.as_str()) {
            (Method::Get, "/health") if matches!(self.broken.as_str(), "health" | "dies") => json(
                500,
                v,
                serde_json::json!({"status": "broken", "version": v}),
            ),
            (Method::Get, "/health") if std::time::Instant::now() < self.healthy_at => json(
                503,
                v,
                serde_json::json!({"status": "starting", "version": v}),
            ),
            (Method::Get, "/health") => {
                json(200, v, serde_json::json!({"status": "ok", "version": v}))
            }
            (_, "/api/v1/books")
                if self.broken == "books" || (self.broken == "proxied" && proxied(request)) =>
            {
                json(
                    500,
                    v,
                    serde_json::json!({"error": "broken on purpose", "version": v}),
                )
            }
            (Method::Get, "/api/v1/books") => {
                let books: Vec<Book> = self
                    .books
                    .lock()
                    .map(|b| b.values().cloned().collect())
                    .unwrap_or_default();
                json(200, v, serde_json::json!({"version": v, "books": books}))
            }
            (Method::Put, "/api/v1/books") => {
                let mut body = String::new();
                if request.as_reader().read_to_string(&mut body).is_err() {
                    return json(400, v, serde_json::json!({"error": "unreadable body"}));
                }
                match serde_json::from_str::<Book>(&body) {
                    Ok(book) => {
                        if let Ok(mut books) = self.books.lock() {
                            books.insert(book.id.clone(), book.clone());
                        }
                        json(200, v, serde_json::json!({"version": v, "book": book}))
                    }
                    Err(e) => json(400, v, serde_json::json!({"error": e.to_string()})),
                }
            }
            _ => json(404, v, serde_json::json!({"error": "not found"})),
        }
    }
}

/// Whether the request came through a proxy: its Host is a name, not an address.
fn proxied(request: &Request) -> bool {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Host"))
        .map(|h| {
            let host = h.value.as_str();
            !(host.starts_with("127.") || host.starts_with("localhost") || host.starts_with('['))
        })
        .unwrap_or(false)
}

/// `books-service probe`: exit 0 when this container's own `/health`
/// answers 200 (a health check for images without a shell or curl, as
/// Swarm's `HEALTHCHECK` runs it).
fn probe(port: &str) -> ! {
    use std::io::{Read, Write};
    let answer = (|| -> std::io::Result<bool> {
        let timeout = Some(std::time::Duration::from_secs(2));
        let mut stream = std::net::TcpStream::connect(format!("127.0.0.1:{port}"))?;
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
        stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
    })();
    std::process::exit(if matches!(answer, Ok(true)) { 0 } else { 1 })
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("probe") {
        probe(&std::env::var("PORT").unwrap_or_else(|_| "8080".into()));
    }
    if let Err(e) = ctrlc::set_handler(|| std::process::exit(0)) {
        eprintln!("books-service: cannot handle SIGTERM: {e}");
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let app = App {
        version: std::env::var("VERSION").unwrap_or_else(|_| "dev".into()),
        broken: std::env::var("BROKEN").unwrap_or_default(),
        healthy_at: std::time::Instant::now()
            + std::time::Duration::from_millis(
                std::env::var("HEALTHY_AFTER_MS")
                    .ok()
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(0),
            ),
        books: Mutex::new(BTreeMap::new()),
    };
    if app.broken == "exit" {
        eprintln!(
            "books-service {}: BROKEN=exit, exiting with code 3",
            app.version
        );
        std::process::exit(3);
    }
    if app.broken == "dies" {
        // Runs, never healthy, then exits: a task a health wait must see end.
        std::thread::spawn(|| {
            std::thread::sleep(std::time::Duration::from_secs(10));
            eprintln!("books-service: BROKEN=dies, exiting with code 4 after 10 s");
            std::process::exit(4);
        });
    }
    let server = match Server::http(format!("0.0.0.0:{port}")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("books-service: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("books-service {} listening on :{port}", app.version);
    let app = std::sync::Arc::new(app);
    let server = std::sync::Arc::new(server);
    // A few workers so a slow client never stalls the health checks.
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (server, app) = (server.clone(), app.clone());
            std::thread::spawn(move || {
                for mut request in server.incoming_requests() {
                    let response = app.handle(&mut request);
                    let _ = request.respond(response);
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}

#[cfg(test)]
mod tests {
    //! The service's own tests: the pipeline's pre-deployment stage runs
    //! them in a container (`cargo test --no-run` builds the binary).
    use super::*;
    use std::io::{Read, Write};

    /// Serve `broken` on a free loopback port in this process.
    fn serve(broken: &str) -> u16 {
        let server = Server::http("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = server.server_addr().to_ip().expect("ip").port();
        let app = App {
            version: "test".into(),
            broken: broken.into(),
            healthy_at: std::time::Instant::now(),
            books: Mutex::new(BTreeMap::new()),
        };
        std::thread::spawn(move || {
            for mut request in server.incoming_requests() {
                let response = app.handle(&mut request);
                let _ = request.respond(response);
            }
        });
        port
    }

    fn request(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        (status, body)
    }

    #[test]
    fn health_answers_with_the_version() {
        let port = serve("");
        let (status, body) = request(port, "GET", "/health", "");
        assert_eq!(status, 200);
        assert!(body.contains("\"version\":\"test\""), "{body}");
    }

    #[test]
    fn books_are_stored_and_listed() {
        let port = serve("");
        let book = r#"{"_id":"1","title":"The Phoenix Project","author":"Gene Kim"}"#;
        assert_eq!(request(port, "PUT", "/api/v1/books", book).0, 200);
        let (status, body) = request(port, "GET", "/api/v1/books", "");
        assert_eq!(status, 200);
        assert!(body.contains("The Phoenix Project"), "{body}");
    }

    #[test]
    fn a_broken_health_check_answers_500() {
        let port = serve("health");
        assert_eq!(request(port, "GET", "/health", "").0, 500);
    }
}
