//! A local cluster of real broker processes (`felix broker --config`) on
//! 127.0.0.1, each killable, pausable and restartable on its own data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use felix_broker::config::{local_cluster_toml, LocalMember};
use felix_client::transport::{dev_certificates, ClientTls};
use felix_client::wire::Message;
use felix_client::{Client, ClientConfig, Route};

pub struct Member {
    pub at: LocalMember,
    config: PathBuf,
    child: Option<Child>,
}

pub struct LocalCluster {
    pub members: Vec<Member>,
    pub ca: PathBuf,
}

/// `n` distinct ports free now (all held at once, so none repeats).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter().map(|s| s.local_addr().unwrap().port()).collect()
}

impl LocalCluster {
    /// Writes configurations for `n` brokers under `root` (with `extra`
    /// settings each) and starts them all.
    pub fn start(root: &Path, n: u64, extra: &str) -> LocalCluster {
        let tls_dir = root.join("ca");
        let ca = dev_certificates(&tls_dir, &[]).unwrap().ca;
        let ports = free_ports(2 * n as usize);
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
        let members = all
            .iter()
            .map(|m| {
                std::fs::create_dir_all(&m.data_dir).unwrap();
                let config = m.data_dir.join("broker.toml");
                std::fs::write(&config, local_cluster_toml(m, &all, &tls_dir, extra)).unwrap();
                Member {
                    at: m.clone(),
                    config,
                    child: None,
                }
            })
            .collect();
        let mut c = LocalCluster { members, ca };
        for i in 0..c.members.len() {
            c.spawn(i);
        }
        for i in 0..c.members.len() {
            c.wait_ready(i);
        }
        c
    }

    pub fn index_of(&self, id: u64) -> usize {
        self.members.iter().position(|m| m.at.id == id).expect("a member")
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        let _ = std::fs::remove_file(m.at.data_dir.join("client.toml"));
        let child = Command::new(env!("CARGO_BIN_EXE_felix"))
            .args(["broker", "--config"])
            .arg(&m.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .env(
                "FELIX_LOG",
                std::env::var("FELIX_TEST_LOG").unwrap_or_else(|_| "error,openraft=off".into()),
            )
            .spawn()
            .expect("spawn felix broker");
        m.child = Some(child);
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

    /// Waits until every member reports the same shard figures, and
    /// returns them.
    pub async fn converged(&self, stream: &str) -> Vec<(u64, u64)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut views = Vec::new();
            for i in 0..self.members.len() {
                views.push(self.shard_view(i, stream).await);
            }
            if views.iter().all(|v| v.is_some() && *v == views[0]) {
                return views[0].clone().unwrap();
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
