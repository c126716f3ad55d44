//! Real broker processes for end-to-end tests: `felix dev` started on a
//! free port with its own data directory, killed with SIGKILL or SIGTERM,
//! restarted on the same data.

#![allow(dead_code)]

pub mod cluster;
pub mod cp;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use felix_broker::server::ClientProfile;
use felix_client::transport::ClientTls;
use felix_client::wire::{Message, StreamConfig};
use felix_client::{Client, ClientConfig, Route};

/// A client of the control plane a profile names (`felix dev`'s serves
/// HTTPS with a certificate from its development CA).
pub fn controlplane_client(profile: &ClientProfile) -> reqwest::Client {
    let ca = profile.controlplane_ca.as_ref().unwrap_or(&profile.ca);
    felix_broker::control::http_client(Some(ca))
        .unwrap()
        .build()
        .unwrap()
}

/// The embedded control plane of a `felix dev`, called as its operator.
pub struct Cp {
    pub url: String,
    pub secret: String,
    pub http: reqwest::Client,
}

impl Cp {
    pub fn of(b: &Broker) -> Cp {
        Cp {
            url: b
                .profile
                .controlplane
                .clone()
                .expect("felix dev names its control plane"),
            secret: std::fs::read_to_string(b.dir.join("controlplane/secret")).unwrap(),
            http: controlplane_client(&b.profile),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.secret);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let (s, v) = self.call(method, path, Some(body)).await;
        assert!((200..300).contains(&s), "{path}: {s} {v}");
        v
    }
}

pub struct Broker {
    pub dir: PathBuf,
    child: Option<Child>,
    pub profile: ClientProfile,
}

impl Broker {
    /// Starts `felix dev` on `dir` and waits until it has written its profile.
    pub fn start(dir: &Path) -> Broker {
        Broker::start_with(dir, &[])
    }

    pub fn start_with(dir: &Path, extra_env: &[(&str, &str)]) -> Broker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_felix"));
        cmd.args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir);
        Broker::spawn(dir, cmd, extra_env, None)
    }

    /// `felix broker --config` with `toml` added to a configuration that
    /// puts data in `dir` and listens on a free port.
    pub fn start_configured(dir: &Path, toml: &str) -> Broker {
        Broker::start_configured_with(dir, toml, &[], None)
    }

    /// [`Broker::start_configured`] with `env` set and stderr written to
    /// `stderr` (else inherited).
    pub fn start_configured_with(
        dir: &Path,
        toml: &str,
        env: &[(&str, &str)],
        stderr: Option<std::fs::File>,
    ) -> Broker {
        let path = dir.join("broker.toml");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            &path,
            format!(
                "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\n{toml}",
                dir.display().to_string()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_felix"));
        cmd.args(["broker", "--config"]).arg(&path);
        Broker::spawn(dir, cmd, env, stderr)
    }

    // The child moves into `Broker`, whose Drop kills and reaps it.
    #[allow(clippy::zombie_processes)]
    fn spawn(
        dir: &Path,
        mut cmd: Command,
        extra_env: &[(&str, &str)],
        stderr: Option<std::fs::File>,
    ) -> Broker {
        let profile_path = dir.join("client.toml");
        let _ = std::fs::remove_file(&profile_path);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.map_or_else(Stdio::inherit, Stdio::from));
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn felix dev");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(p) = ClientProfile::load(&profile_path) {
                return Broker {
                    dir: dir.to_owned(),
                    child: Some(child),
                    profile: p,
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("felix dev did not start within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for a process that ends on its own (a failpoint) and says how.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.take().expect("running").wait().expect("wait")
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_free_sigterm(c.id());
            let status = c.wait().expect("wait");
            assert!(status.success(), "felix dev exited with {status}");
        }
    }

    /// Resident memory of the broker process, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let kb: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb * 1024
    }

    pub fn client_config(&self) -> ClientConfig {
        let tls = ClientTls::from_pem_files(&self.profile.ca, None).expect("CA");
        let mut c = ClientConfig::new(self.profile.brokers[0].clone(), tls);
        c.server_name = self.profile.server_name.clone();
        if let Some(t) = &self.profile.token {
            c.token = bytes::Bytes::from(t.clone());
        }
        c
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.client_config()).await.expect("connect")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn unsafe_free_sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
}

pub fn stream_config(name: &str, shards: u32) -> StreamConfig {
    StreamConfig {
        max_deliveries: 5,
        ..StreamConfig::stream(name, shards, felix_client::wire::Durability::Always)
    }
}

pub async fn admin(client: &Client, m: Message) -> Message {
    match client.call(Route::Any, &m).await.expect("admin call") {
        Message::Error(e) => panic!("admin request refused: {e}"),
        m => m,
    }
}

pub async fn create(client: &Client, c: StreamConfig) {
    assert_eq!(admin(client, Message::StreamCreate(c)).await, Message::Done);
}

/// A batch of one record holding `value`.
pub fn one_record(value: &[u8]) -> bytes::Bytes {
    felix_testkit::Batch::of(&[value]).bytes()
}

/// A single-record publish to shard 0 of `stream`, acknowledged by the
/// leader.
pub fn publish_one(stream: &str, value: &[u8]) -> Message {
    Message::Publish {
        stream: stream.into(),
        shard: Some(0),
        ack: felix_client::wire::AckLevel::Leader,
        producer_id: 0,
        sequence: 0,
        batch: one_record(value),
    }
}

/// The runtime every end-to-end test drives its clients on.
/// A `felix dev` in a fresh directory (kept until the directory is
/// dropped) and a runtime to drive clients with.
pub fn dev_broker() -> (tempfile::TempDir, tokio::runtime::Runtime, Broker) {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path());
    (dir, rt(), b)
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Creates a stream once the cluster can: while the brokers register,
/// creation is refused, so it is asked again until a generous deadline.
pub async fn create_when_ready(client: &Client, c: StreamConfig) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.call(Route::Any, &Message::StreamCreate(c.clone())).await {
            Ok(Message::Done) => return,
            r => assert!(Instant::now() < deadline, "creating {}: {r:?}", c.name),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A producer that sends what is queued after 1 ms, as the workloads that
/// keep a window of records in flight want.
pub async fn eager_producer(
    client: &Client,
    stream: &str,
) -> Result<felix_client::Producer, felix_client::ClientError> {
    let cfg = felix_client::ProducerConfig {
        linger_ms: 1,
        ..felix_client::ProducerConfig::default()
    };
    client.producer(stream, cfg).await
}

/// Every record of `shard` from `from` until `n` have arrived.
pub async fn read_n(
    client: &felix_client::Client,
    stream: &str,
    shard: u32,
    start: felix_client::wire::Start,
    n: usize,
) -> Vec<(u64, bytes::Bytes)> {
    let opts = felix_client::SubscribeOptions {
        shards: vec![shard],
        start,
        ..felix_client::SubscribeOptions::default()
    };
    let mut sub = client.subscribe(stream, opts).await.unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(std::time::Duration::from_secs(20), sub.next())
            .await
            .expect("records within 20 s")
            .expect("subscription open")
            .expect("record");
        out.push((d.record.offset.0, d.record.value.unwrap()));
    }
    out
}

/// Every file under `dir`, at any depth (none if `dir` is missing).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Whether any file under `dir` holds `needle`.
pub fn holds(dir: &Path, needle: &[u8]) -> bool {
    files_under(dir)
        .iter()
        .any(|p| std::fs::read(p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)))
}
