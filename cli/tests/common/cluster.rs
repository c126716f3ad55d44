//! A local cluster of real broker processes (`felix broker --config`) on
//! 127.0.0.1, each killable, pausable and restartable on its own data,
//! following a control plane: the caller's, or one `felix controlplane`
//! process of the cluster's own (with the development tenant `dev` and
//! its namespace `default`, where bare stream names live, and tokens not
//! required).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use felix_broker::config::{local_cluster_toml, LocalMember};
use felix_client::transport::{dev_certificates, ClientTls, IssuedCertificate};

/// Broker `m`'s replication certificate for the region its settings
/// (`extra`) name, issued by the test CA under `ca_dir` into a directory
/// beside the CA's (not the broker's data directory, which a test may
/// empty to rebuild the broker).
fn issue(ca_dir: &Path, m: &LocalMember, extra: &str) -> IssuedCertificate {
    let region = extra
        .lines()
        .find_map(|l| l.strip_prefix("region = \"")?.strip_suffix('"'))
        .unwrap_or(felix_client::transport::identity::REGION_DEFAULT);
    dev_certificates(ca_dir, &[])
        .unwrap()
        .issue_broker(m.id, region, &ca_dir.join(format!("b{}", m.id)))
        .unwrap()
}
use felix_client::wire::Message;
use felix_client::{Client, ClientConfig, Route};

pub struct Member {
    pub at: LocalMember,
    config: PathBuf,
    /// A control-plane node's configuration: the process runs it too
    /// (combined mode).
    pub controlplane: Option<PathBuf>,
    child: Option<Child>,
    /// Decommissioned and stopped for good: never restarted, and not
    /// asked to agree with the others.
    pub retired: bool,
}

pub struct LocalCluster {
    pub members: Vec<Member>,
    /// The control-plane process this cluster started for itself, and its
    /// API port.
    pub controlplane: Option<(super::cp::Proc, u16)>,
    /// Every broker's settings beyond its own (the control plane's too).
    extra: String,
    /// Where members' directories and the shared CA live.
    root: PathBuf,
    pub ca: PathBuf,
    /// When set, each broker's stderr goes to `b<id>.log` here.
    pub stderr_dir: Option<PathBuf>,
    /// Each broker reads its clock offset from `skew-b<id>` here.
    pub skew_dir: Option<PathBuf>,
}

/// The id of the master key [`LocalCluster::encrypted`] makes.
pub const CLUSTER_MASTER_KEY_ID: &str = "cluster-master";

/// Makes the development tenant and namespace on the control plane at
/// `port` (once it has a leader), on a thread of its own so that any
/// caller, inside a runtime or not, may wait for it.
fn dev_tenant(port: u16, encrypted: bool) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use reqwest::Method;
            let http = reqwest::Client::new();
            let ports = [port];
            super::cp::until(30, "a control-plane leader", || super::cp::leader(&http, &ports)).await;
            let tenant = match encrypted {
                true => serde_json::json!({"name": "dev", "encryption": {"key_id": CLUSTER_MASTER_KEY_ID}}),
                false => serde_json::json!({"name": "dev"}),
            };
            for (path, body) in [
                ("/v1/tenants", tenant),
                (
                    "/v1/tenants/dev/namespaces",
                    serde_json::json!({"name": "default"}),
                ),
            ] {
                super::cp::until(30, path, || async {
                    let (s, _) = super::cp::call(&http, port, Method::POST, path, Some(body.clone()))
                        .await
                        .ok()?;
                    // 409: made by an earlier launch.
                    (s == 200 || s == 409).then_some(())
                })
                .await;
            }
        })
    })
    .join()
    .expect("the development tenant");
}

/// `n` distinct UDP ports, held until the sockets are dropped: a caller
/// that binds more sockets on port 0 meanwhile (the fault suite's proxies)
/// must not be given one of them.
fn hold_ports(n: usize) -> (Vec<u16>, Vec<std::net::UdpSocket>) {
    let held: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    (
        held.iter().map(|s| s.local_addr().unwrap().port()).collect(),
        held,
    )
}

impl LocalCluster {
    /// `extra` with a master key made under `root` for every broker:
    /// the development tenant is then made with encryption at rest on.
    pub fn encrypted(root: &Path, extra: &str) -> String {
        let file = root.join("master.key");
        let text = felix_broker::at_rest::FileMasterKey::generate(CLUSTER_MASTER_KEY_ID).unwrap();
        felix_broker::at_rest::write_new_key_file(&file, &text).unwrap();
        format!(
            "{extra}\n[encryption]\nmaster_key_file = {:?}\n",
            file.display().to_string()
        )
    }

    /// The master key file the brokers are configured with, if any.
    pub fn master_key_file(&self) -> Option<PathBuf> {
        self.extra
            .lines()
            .find_map(|l| l.strip_prefix("master_key_file = \"")?.strip_suffix('"'))
            .map(PathBuf::from)
    }

    /// Broker `i`'s keyring of the development tenant's shard `shard`,
    /// read from its data directory as an operator's tool would (with the
    /// master key).
    pub fn dev_keys(&self, i: usize, shard: u64) -> Option<Arc<dyn felix_log::batch::seal::Keyring>> {
        let master = self.master_key_file()?;
        let master: Arc<dyn felix_broker::at_rest::MasterKey> =
            Arc::new(felix_broker::at_rest::FileMasterKey::load(&master).unwrap());
        let t = felix_broker::at_rest::Tenants::open(
            &self.members[i].at.data_dir,
            Some(master),
            felix_broker::clock::system_clock(),
        )
        .unwrap();
        Some(t.ring("dev", shard))
    }

    /// Writes configurations for `n` brokers under `root` (with `extra`
    /// settings each) and starts them all.
    pub fn start(root: &Path, n: u64, extra: &str) -> LocalCluster {
        let mut c = LocalCluster::configure(root, n, extra, |_| None);
        c.launch();
        c
    }

    /// Writes configurations for `n` brokers without starting them.
    /// `route` may give, for the brokers' real (id, replication address)
    /// pairs, the addresses their peers are told to use instead (proxies).
    pub fn configure(
        root: &Path,
        n: u64,
        extra: &str,
        route: impl FnOnce(&[(u64, std::net::SocketAddr)]) -> Option<Vec<(u64, std::net::SocketAddr)>>,
    ) -> LocalCluster {
        let tls_dir = root.join("ca");
        let ca = dev_certificates(&tls_dir, &[]).unwrap().ca;
        // Brokers follow a control plane: the caller's, or one of our own.
        let (controlplane, extra) = match extra.contains("[controlplane]") {
            true => (None, extra.to_string()),
            false => {
                let port = super::cp::free_port();
                let cp = super::cp::Proc::start(root, 1, &[port]);
                let follow = format!(
                    "[controlplane]\nurls = [\"http://127.0.0.1:{port}\"]\nsecret = \"{}\"\nheartbeat_interval_ms = 500\nrequire_tokens = false\n",
                    super::cp::SECRET
                );
                (Some((cp, port)), format!("{extra}\n{follow}"))
            }
        };
        let (ports, held) = hold_ports(2 * n as usize);
        let all: Vec<LocalMember> = (1..=n)
            .map(|id| LocalMember {
                id,
                client: format!("127.0.0.1:{}", ports[2 * (id as usize - 1)])
                    .parse()
                    .unwrap(),
                raft: format!("127.0.0.1:{}", ports[2 * (id as usize - 1) + 1])
                    .parse()
                    .unwrap(),
                data_dir: root.join(format!("b{id}")),
            })
            .collect();
        let real: Vec<(u64, std::net::SocketAddr)> = all.iter().map(|m| (m.id, m.raft)).collect();
        let seen_by_peers: Vec<LocalMember> = match route(&real) {
            Some(routes) => all
                .iter()
                .map(|m| LocalMember {
                    raft: routes
                        .iter()
                        .find(|(id, _)| *id == m.id)
                        .expect("a route per broker")
                        .1,
                    ..m.clone()
                })
                .collect(),
            None => all.clone(),
        };
        // The brokers bind these when they start, after this.
        drop(held);
        let members = all
            .iter()
            .map(|m| {
                std::fs::create_dir_all(&m.data_dir).unwrap();
                let config = m.data_dir.join("broker.toml");
                let seen = seen_by_peers
                    .iter()
                    .find(|s| s.id == m.id)
                    .expect("every member")
                    .raft;
                let advertise = (seen != m.raft).then_some(seen);
                let cert = issue(&tls_dir, m, &extra);
                std::fs::write(&config, local_cluster_toml(m, advertise, &cert, &extra)).unwrap();
                Member {
                    at: m.clone(),
                    config,
                    controlplane: None,
                    child: None,
                    retired: false,
                }
            })
            .collect();
        LocalCluster {
            members,
            controlplane,
            extra,
            root: root.to_path_buf(),
            ca,
            stderr_dir: None,
            skew_dir: None,
        }
    }

    /// Starts every member and waits until each serves (and, with the
    /// cluster's own control plane, until it takes bare stream names).
    pub fn launch(&mut self) {
        if let Some((_, port)) = &self.controlplane {
            dev_tenant(*port, self.master_key_file().is_some());
        }
        for i in 0..self.members.len() {
            self.spawn(i);
        }
        for i in 0..self.members.len() {
            self.wait_ready(i);
        }
    }

    /// Configures broker `max id + 1` as the others (it learns its peers
    /// from the control plane's registry, and they learn it) and starts
    /// it; returns its id.
    pub fn add(&mut self) -> u64 {
        self.add_routed(|_, _| None)
    }

    /// [`LocalCluster::add`], its peers told to reach it at what `route`
    /// gives for its (id, real replication address), if anything.
    pub fn add_routed(
        &mut self,
        route: impl FnOnce(u64, std::net::SocketAddr) -> Option<std::net::SocketAddr>,
    ) -> u64 {
        let id = self.members.iter().map(|m| m.at.id).max().unwrap_or(0) + 1;
        let (ports, held) = hold_ports(2);
        let at = LocalMember {
            id,
            client: format!("127.0.0.1:{}", ports[0]).parse().unwrap(),
            raft: format!("127.0.0.1:{}", ports[1]).parse().unwrap(),
            data_dir: self.root.join(format!("b{id}")),
        };
        std::fs::create_dir_all(&at.data_dir).unwrap();
        let config = at.data_dir.join("broker.toml");
        let advertise = route(id, at.raft);
        drop(held);
        std::fs::write(
            &config,
            local_cluster_toml(
                &at,
                advertise,
                &issue(&self.root.join("ca"), &at, &self.extra),
                &self.extra,
            ),
        )
        .unwrap();
        self.members.push(Member {
            at,
            config,
            controlplane: None,
            child: None,
            retired: false,
        });
        let i = self.members.len() - 1;
        self.spawn(i);
        self.wait_ready(i);
        id
    }

    /// Appends `toml` (a table of its own) to member `i`'s configuration,
    /// before it starts.
    pub fn append_config(&self, i: usize, toml: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.members[i].config)
            .unwrap();
        writeln!(f, "\n{toml}").unwrap();
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    pub fn index_of(&self, id: u64) -> usize {
        self.members.iter().position(|m| m.at.id == id).expect("a member")
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        let _ = std::fs::remove_file(m.at.data_dir.join("client.toml"));
        let stderr = match &self.stderr_dir {
            Some(d) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(d.join(format!("b{}.log", m.at.id)))
                    .expect("broker log file"),
            ),
            None => Stdio::inherit(),
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_felix"));
        cmd.args(["broker", "--config"]).arg(&m.config);
        if let Some(cp) = &m.controlplane {
            cmd.arg("--controlplane-config").arg(cp);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).env(
            "FELIX_LOG",
            std::env::var("FELIX_TEST_LOG").unwrap_or_else(|_| "error,openraft=off".into()),
        );
        if let Some(d) = &self.skew_dir {
            cmd.env("FELIX_CLOCK_SKEW_FILE", d.join(format!("skew-b{}", m.at.id)));
        }
        m.child = Some(cmd.spawn().expect("spawn felix broker"));
    }

    fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let profile = self.members[i].at.data_dir.join("client.toml");
        while !profile.exists() {
            assert!(
                Instant::now() < deadline,
                "broker {} did not start",
                self.members[i].at.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts member `i` again on its data; `Err` with why if the process
    /// exits before it serves (it refused its data).
    pub fn try_restart(&mut self, i: usize) -> Result<(), String> {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
        let deadline = Instant::now() + Duration::from_secs(60);
        let profile = self.members[i].at.data_dir.join("client.toml");
        while !profile.exists() {
            let c = self.members[i].child.as_mut().expect("spawned");
            if let Some(status) = c.try_wait().expect("try_wait") {
                self.members[i].child = None;
                return Err(format!("broker {} exited with {status}", self.members[i].at.id));
            }
            assert!(
                Instant::now() < deadline,
                "broker {} did not start",
                self.members[i].at.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Removes everything in member `i`'s data directory except its
    /// configuration (it is stopped): it comes back as a new replica.
    pub fn wipe(&self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        for e in std::fs::read_dir(&self.members[i].at.data_dir).unwrap() {
            let e = e.unwrap();
            if e.file_name() != "broker.toml" {
                let p = e.path();
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).unwrap();
                } else {
                    std::fs::remove_file(&p).unwrap();
                }
            }
        }
    }

    /// Starts member `i` again on its data and waits until it serves.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
        self.wait_ready(i);
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM member `i` and wait for it to exit; returns whether it
    /// exited cleanly and how long it took.
    pub fn terminate(&mut self, i: usize) -> (bool, Duration) {
        let t = Instant::now();
        self.signal(i, "-TERM");
        let mut c = self.members[i].child.take().expect("running");
        let status = c.wait().expect("wait");
        (status.success(), t.elapsed())
    }

    pub fn signal(&self, i: usize, sig: &str) {
        let pid = self.members[i].child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// SIGTERM every member and wait for each to exit.
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_some() {
                self.signal(i, "-TERM");
            }
        }
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.wait();
            }
        }
    }

    /// A client that knows every broker, with short timeouts so a dead
    /// broker costs little.
    pub fn client_config(&self) -> ClientConfig {
        self.config_for(
            &self
                .members
                .iter()
                .map(|m| m.at.client.to_string())
                .collect::<Vec<_>>(),
        )
    }

    /// A client that talks to member `i` only.
    pub fn member_config(&self, i: usize) -> ClientConfig {
        self.config_for(&[self.members[i].at.client.to_string()])
    }

    fn config_for(&self, brokers: &[String]) -> ClientConfig {
        let tls = ClientTls::from_pem_files(&self.ca, None).expect("CA");
        let mut c = ClientConfig::new(brokers[0].clone(), tls);
        c.brokers = brokers.to_vec();
        c.server_name = "localhost".into();
        c.connect_timeout_ms = 1_000;
        c.request_timeout_ms = 8_000;
        c
    }

    /// The leader of `stream`'s shard `shard`, once there is one.
    pub async fn leader(&self, client: &Client, stream: &str, shard: u32) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if client.refresh_metadata(&[stream.to_owned()]).await.is_ok() {
                if let Ok(info) = client.stream_info(stream).await {
                    if let Some(l) = info
                        .shards
                        .iter()
                        .find(|s| s.shard == shard)
                        .and_then(|s| s.leader)
                    {
                        if self.members[self.index_of(l)].child.is_some() {
                            return l;
                        }
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader for {stream}/{shard}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Member `i`'s view of a stream's shards: (earliest, next readable).
    pub async fn shard_view(&self, i: usize, stream: &str) -> Option<Vec<(u64, u64)>> {
        let client = Client::connect(self.member_config(i)).await.ok()?;
        let m = Message::StreamDescribe { name: stream.into() };
        let r = client
            .call(Route::Broker(&self.members[i].at.client.to_string()), &m)
            .await;
        client.close().await;
        match r.ok()? {
            Message::StreamDescription { shards, .. } => {
                Some(shards.iter().map(|s| (s.earliest, s.next)).collect())
            }
            _ => None,
        }
    }

    /// Member `i`'s figures of the shards of `stream` it holds, by shard.
    pub async fn hosted_view(&self, i: usize, stream: &str) -> Option<BTreeMap<u32, (u64, u64)>> {
        let client = Client::connect(self.member_config(i)).await.ok()?;
        let m = Message::StreamDescribe { name: stream.into() };
        let r = client
            .call(Route::Broker(&self.members[i].at.client.to_string()), &m)
            .await;
        client.close().await;
        match r.ok()? {
            Message::StreamDescription { shards, .. } => {
                Some(shards.iter().map(|s| (s.shard, (s.earliest, s.next))).collect())
            }
            _ => None,
        }
    }

    /// Waits until, for every shard of `stream`, every running member that
    /// holds a replica of it reports the same figures (and some member
    /// holds each), and returns them by shard.
    pub async fn converged(&self, stream: &str) -> Vec<(u64, u64)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut views = Vec::new();
            for i in (0..self.members.len()).filter(|&i| self.is_running(i)) {
                views.push(self.hosted_view(i, stream).await);
            }
            let mut agreed: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
            let mut ok = views.iter().all(Option::is_some);
            for (shard, fig) in views.iter().flatten().flatten() {
                if *agreed.entry(*shard).or_insert(*fig) != *fig {
                    ok = false;
                }
            }
            let every = agreed.keys().copied().eq(0..agreed.len() as u32);
            if ok && every && !agreed.is_empty() {
                return agreed.into_values().collect();
            }
            assert!(Instant::now() < deadline, "replicas did not converge: {views:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
