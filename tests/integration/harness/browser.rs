//! A real browser for tests: Debian's headless `chromium`, driven through `chromedriver`
//! (W3C WebDriver) with fantoccini. Screenshots go to `target/test-artifacts/<test>/`.

use std::path::PathBuf;
use std::time::Duration;

use super::{Server, find_bin, free_port};

const INSTALL: &str =
    "install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)";

/// A chromedriver with one headless chromium session.
pub struct Browser {
    pub client: fantoccini::Client,
    _driver: Server,
    _profile: tempfile::TempDir,
    artifacts: PathBuf,
    shots: usize,
}

impl Browser {
    /// Starts chromedriver and a headless chromium with a new, empty profile; screenshots of
    /// this browser are kept under `target/test-artifacts/<name>/`.
    pub async fn start(name: &str) -> Self {
        let chromium = find_bin("chromium", "DR_TEST_CHROMIUM_BIN", &[], INSTALL);
        let driver = find_bin("chromedriver", "DR_TEST_CHROMEDRIVER_BIN", &[], INSTALL);
        let port = free_port();
        let profile = tempfile::tempdir().unwrap();
        let log = profile.path().join("chromedriver.log");
        let server = Server::spawn(
            &[
                driver.to_str().unwrap(),
                &format!("--port={port}"),
                "--allowed-ips=127.0.0.1",
            ],
            &log,
        );
        let url = format!("http://127.0.0.1:{port}");
        server.wait_ready("chromedriver", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "binary": chromium,
                // As the machine notes say: without the background-networking flags chromium
                // keeps dialling out of this closed network.
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,1400",
                    format!("--user-data-dir={}", profile.path().join("profile").display()),
                ],
            }),
        );
        // fantoccini speaks plain HTTP to chromedriver, but its rustls build wants a provider.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = fantoccini::ClientBuilder::rustls()
            .expect("rustls")
            .capabilities(caps)
            .connect(&url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromium session: {e}\nchromedriver log:\n{}",
                    server.log_tail()
                )
            });
        let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/test-artifacts")
            .join(name);
        let _ = std::fs::remove_dir_all(&artifacts);
        std::fs::create_dir_all(&artifacts).unwrap();
        Self {
            client,
            _driver: server,
            _profile: profile,
            artifacts,
            shots: 0,
        }
    }

    /// Saves a screenshot of the page as `NN-what.png`.
    pub async fn shot(&mut self, what: &str) {
        self.shots += 1;
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(
            self.artifacts.join(format!("{:02}-{what}.png", self.shots)),
            png,
        )
        .unwrap();
    }

    /// The page's HTML.
    pub async fn source(&self) -> String {
        self.client.source().await.expect("page source")
    }

    /// The path of the page shown.
    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("url")
            .path()
            .to_owned()
    }

    /// Ends the session.
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
