//! A real Redis Cluster for a test: `n` redis-servers with `--cluster-enabled yes`, each on a
//! free port with its cluster bus on another free port, joined by `redis-cli --cluster create`
//! and waited on until every node reports `cluster_state:ok` with all 16,384 slots served.
//! The servers are [`RedisServer`]s, so each is killed on drop and dumps its log if the test
//! panics.

#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use redis::cluster_async::ClusterConnection;

use super::{RedisServer, TIMEOUT, free_port, within};

/// A cluster of masters without replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Start `masters` nodes, create the cluster and wait until it serves every slot.
    pub fn start(masters: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| {
                // The bus port defaults to port + 10000, which may be taken or beyond 65535.
                RedisServer::start_with(&[
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    "nodes.conf".into(),
                    "--cluster-port".into(),
                    free_port().to_string(),
                    "--cluster-node-timeout".into(),
                    "3000".into(),
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("timeout")
            .args(["60", "redis-cli", "--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli (install redis-tools): {e}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ready();
        cluster
    }

    /// Wait until every node says the cluster is up and knows all its peers.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + TIMEOUT;
        for node in &self.nodes {
            loop {
                let info: String = node
                    .client()
                    .get_connection_with_timeout(Duration::from_secs(1))
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c))
                    .unwrap_or_default();
                let ok = info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains(&format!("cluster_known_nodes:{}", self.nodes.len()));
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster node {} not ready:\n{info}",
                    node.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The seed nodes as a YAML flow list: `[redis://127.0.0.1:1, …]`.
    pub fn nodes_yaml(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(|n| n.url()).collect();
        format!("[{}]", urls.join(", "))
    }

    /// A cluster connection for the test's own commands; with `push`, it receives Pub/Sub
    /// messages (RESP3).
    pub async fn conn_with(
        &self,
        push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> ClusterConnection {
        let urls: Vec<String> = self.nodes.iter().map(|n| n.url()).collect();
        let mut builder = redis::cluster::ClusterClientBuilder::new(urls).response_timeout(TIMEOUT);
        if let Some(push) = push {
            builder = builder.use_protocol(redis::ProtocolVersion::RESP3).push_sender(push);
        }
        let client = builder.build().expect("cluster client");
        within(client.get_async_connection())
            .await
            .expect("connect to the test cluster")
    }

    /// A cluster connection for the test's own commands.
    pub async fn conn(&self) -> ClusterConnection {
        self.conn_with(None).await
    }

    /// The port of the node serving `key`'s slot.
    pub fn owner_of(&self, key: &str) -> u16 {
        let slot: i64 = {
            let mut c = self.nodes[0].client().get_connection().expect("connect");
            redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query(&mut c)
                .expect("CLUSTER KEYSLOT")
        };
        let mut c = self.nodes[0].client().get_connection().expect("connect");
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut c).expect("CLUSTER SLOTS");
        for range in slots {
            if let redis::Value::Array(parts) = range
                && let [
                    redis::Value::Int(lo),
                    redis::Value::Int(hi),
                    redis::Value::Array(master),
                    ..,
                ] = parts.as_slice()
                && (*lo..=*hi).contains(&slot)
                && let Some(redis::Value::Int(port)) = master.get(1)
            {
                return *port as u16;
            }
        }
        panic!("no node serves slot {slot} of {key}");
    }
}
