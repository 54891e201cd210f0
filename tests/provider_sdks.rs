//! The simulator judged by the providers' own SDKs (python-alipay-sdk, Alipay's
//! alipay-sdk-python, wechatpy, wechatpayv3): `paygate sim` on loopback, driven by
//! `tests/provider_sdks/check.py` as a merchant would drive the real gateways, every
//! answer and notification verified by the SDK's own code. The SDKs are installed from
//! PyPI into a virtualenv under `target/` the first time (pinned in
//! `tests/provider_sdks/requirements.txt`); python3 with venv is required.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv with the SDKs, made (once) if it is not there yet.
fn sdk_python() -> PathBuf {
    let venv = root().join("target").join("provider-sdks-venv");
    let python = venv.join("bin").join("python");
    let requirements = root().join("tests").join("provider_sdks").join("requirements.txt");
    let stamp = venv.join("installed-requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) && python.exists() {
        return python;
    }
    let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).status();
    assert!(
        made.is_ok_and(|s| s.success()),
        "python3 -m venv {} failed: python3 with venv is required",
        venv.display()
    );
    let installed = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements)
        .status()
        .unwrap();
    assert!(installed.success(), "pip could not install the provider SDKs from PyPI");
    std::fs::write(&stamp, wanted).unwrap();
    python
}

/// The demo channels' keys, opened from the configuration, as the SDKs take them.
fn keys(dir: &Path) -> PathBuf {
    let config = test_config(dir);
    let setting = |provider: &str, name: &str| -> String {
        let ch = config.channels.iter().find(|c| c.provider == provider).unwrap();
        ch.settings[name].as_str().unwrap().to_owned()
    };
    let keys = json!({
        "alipay": {
            "app_id": setting("alipay", "app_id"),
            "app_private_key": setting("alipay", "app_private_key"),
            "alipay_public_key": setting("alipay", "alipay_public_key"),
        },
        "wechat_v2": {
            "appid": setting("wechat_v2", "appid"),
            "mch_id": setting("wechat_v2", "mch_id"),
            "api_key": setting("wechat_v2", "api_key"),
        },
        "wechat_v3": {
            "appid": setting("wechat_v3", "appid"),
            "mchid": setting("wechat_v3", "mchid"),
            "merchant_serial": setting("wechat_v3", "merchant_serial"),
            "merchant_private_key": setting("wechat_v3", "merchant_private_key"),
            "api_v3_key": setting("wechat_v3", "api_v3_key"),
        },
    });
    let path = dir.join("keys.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&keys).unwrap()).unwrap();
    path
}

/// `paygate sim` on a free port, killed when dropped.
struct Sim {
    child: std::process::Child,
    url: String,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sim(data: &Path) -> Sim {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args(["sim", "--config"])
        .arg(config_dir())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data.join("sim"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let up = eventually(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    assert!(up.is_some(), "paygate sim did not start");
    Sim { child, url }
}

#[test]
fn the_providers_own_sdks_accept_the_simulator() {
    let python = sdk_python();
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    let sim = sim(dir.path());
    let out = Command::new(python)
        .arg(root().join("tests").join("provider_sdks").join("check.py"))
        .args(["--sim", &sim.url, "--keys"])
        .arg(&keys)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "the SDKs refused the simulator:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
