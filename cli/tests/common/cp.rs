//! A control-plane node as a real `felix controlplane` process, its HTTP
//! API, and polling until something holds.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SECRET: &str = "cp-test-cluster-secret-0123456789";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn start(dir: &Path, id: u64, ports: &[u16]) -> Proc {
        Proc::start_with(dir, id, ports, "")
    }

    /// With `extra` settings (top-level keys) in the configuration.
    pub fn start_with(dir: &Path, id: u64, ports: &[u16], extra: &str) -> Proc {
        let path = Proc::configure(dir, id, ports, extra);
        let log = std::fs::File::create(dir.join(format!("cp{id}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_felix"))
            .args(["controlplane", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(Some(child))
    }

    /// Writes node `id`'s configuration (of nodes on `ports`) under `dir`
    /// and returns its path.
    pub fn configure(dir: &Path, id: u64, ports: &[u16], extra: &str) -> std::path::PathBuf {
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("[[peers]]\nid = {}\naddr = \"127.0.0.1:{p}\"\n", i + 1))
            .collect();
        let cfg = format!(
            "id = {id}\nlisten = \"127.0.0.1:{}\"\ndata_dir = {:?}\ncluster_secret = \"{SECRET}\"\n{extra}\n{}",
            ports[id as usize - 1],
            dir.join(format!("cp{id}")).display().to_string(),
            peers.join("\n")
        );
        let path = dir.join(format!("cp{id}.toml"));
        std::fs::write(&path, cfg).unwrap();
        path
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SIGKILL: no shutdown path runs.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn call(
    http: &reqwest::Client,
    port: u16,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let mut r = http
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(SECRET)
        .timeout(Duration::from_secs(1));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.map_err(|e| e.to_string())?;
    let s = resp.status().as_u16();
    Ok((s, resp.json().await.unwrap_or(Value::Null)))
}

pub async fn leader(http: &reqwest::Client, ports: &[u16]) -> Option<u64> {
    for p in ports {
        if let Ok((200, v)) = call(http, *p, reqwest::Method::GET, "/v1/cluster", None).await {
            if let Some(l) = v["leader"].as_u64() {
                return Some(l);
            }
        }
    }
    None
}

/// Polls `f` for up to `secs` seconds until it gives a value.
pub async fn until<T, F, Fut>(secs: u64, what: &str, f: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
