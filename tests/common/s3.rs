//! A real S3-compatible server for the tests (moto's server, from the test virtualenv) on loopback, a TCP proxy
//! in front of it that can be slowed down or cut (a store that goes away mid-run), and an independent client
//! (boto3, through tests/s3_tool.py) to check what the store holds.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::python;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// moto's S3 server, killed when dropped. Multipart parts may be as small as 64 KiB (AWS wants 5 MiB), so a
/// test file of a few MiB spans several parts.
pub struct Moto {
    child: Child,
    pub port: u16,
}

pub const MIN_PART: usize = 64 * 1024;

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new(python())
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .env("S3_UPLOAD_PART_MIN_SIZE", MIN_PART.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server (pip install 'moto[server]'; `make test` does)");
        wait_for_port(port, "moto");
        Moto { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn tool(&self, args: &[&str]) -> Value {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3_tool.py");
        let o = Command::new(python()).arg(script).arg(self.endpoint()).args(args).output().expect("run s3_tool.py");
        assert!(o.status.success(), "s3_tool.py {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).expect("json from s3_tool.py")
    }

    pub fn mkbucket(&self, bucket: &str) {
        self.tool(&["mkbucket", bucket]);
    }

    /// Keys (and sizes, ETags) under a prefix.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<Value> {
        self.tool(&["list", bucket, prefix]).as_array().cloned().unwrap()
    }

    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.list(bucket, prefix).iter().map(|o| o["key"].as_str().unwrap().to_string()).collect()
    }

    /// Downloads everything under `prefix` into `dest`.
    pub fn mirror(&self, bucket: &str, prefix: &str, dest: &Path) -> Vec<Value> {
        self.tool(&["mirror", bucket, prefix, dest.to_str().unwrap()]).as_array().cloned().unwrap()
    }

    /// Multipart uploads begun and not completed.
    pub fn uploads(&self, bucket: &str) -> Vec<Value> {
        self.tool(&["uploads", bucket]).as_array().cloned().unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to the store: `throttle` slows uploads down, `cut` drops every connection and refuses new ones.
pub struct Proxy {
    pub port: u16,
    down: Arc<AtomicBool>,
    /// Microseconds to sleep per 16 KiB forwarded towards the store.
    throttle_us: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let throttle_us = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (d, t, c) = (down.clone(), throttle_us.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if d.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                c.lock().unwrap().push(client.try_clone().unwrap());
                c.lock().unwrap().push(server.try_clone().unwrap());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (t1, d1, d2) = (t.clone(), d.clone(), d.clone());
                std::thread::spawn(move || pump(client, server, Some(t1), d1));
                std::thread::spawn(move || pump(s2, c2, None, d2));
            }
        });
        Proxy { port, down, throttle_us, conns }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn throttle(&self, per_16k: Duration) {
        self.throttle_us.store(per_16k.as_micros() as u64, Ordering::SeqCst);
    }

    /// The store goes away: open connections are reset and new ones are closed at once.
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, throttle: Option<Arc<AtomicU64>>, down: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if down.load(Ordering::SeqCst) {
            break;
        }
        if let Some(t) = &throttle {
            let us = t.load(Ordering::SeqCst);
            if us > 0 {
                std::thread::sleep(Duration::from_micros(us));
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Runs `b24-export` with the test store's credentials in the environment.
pub fn s3_cmd(args: &[&str]) -> Command {
    let mut c = super::bin();
    c.args(args)
        .env_remove("B24_WEBHOOK_URL")
        .env("AWS_ACCESS_KEY_ID", "AKIATESTKEY0001")
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL");
    c
}

/// The test store's secret key: it must never show up in anything the exporter prints or writes.
pub const SECRET_KEY: &str = "s3cretKeyThatMustNotLeak0042";
