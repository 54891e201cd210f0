//! Secrets at rest: the shipped configuration is sealed under the public demo key and
//! runs as is; `serve --production` refuses it; a configuration sealed under a real key
//! runs only with that key; plain-text secrets are refused; secrets never reach the log.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use paygate::secrets::MasterKey;

fn paygate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_paygate"))
}

/// The repository's configuration with every sealed value re-sealed under `key_hex`,
/// by `paygate secret reseal` as an operator leaving the demo key would.
fn config_sealed_with(key_hex: &str, dir: &Path) {
    copy_dir(&config_dir(), dir);
    let key_file = dir.join("master.key");
    std::fs::write(&key_file, key_hex).unwrap();
    let out = paygate()
        .args(["secret", "reseal", "--config"])
        .arg(dir)
        .arg("--to-key-file")
        .arg(&key_file)
        .env_remove("PAYGATE_MASTER_KEY")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    for file in ["default.toml", "merchants.toml", "channels.toml", "sim.toml"] {
        assert!(said.contains(&format!("{file}: ")), "{file} re-sealed: {said}");
    }
    std::fs::remove_file(key_file).unwrap();
    // A second run under the old key finds values it cannot open, and changes nothing.
    let before = std::fs::read_to_string(dir.join("channels.toml")).unwrap();
    let other = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(other.path(), "9d".repeat(32)).unwrap();
    let again = paygate()
        .args(["secret", "reseal", "--config"])
        .arg(dir)
        .arg("--to-key-file")
        .arg(other.path())
        .env_remove("PAYGATE_MASTER_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(!again.status.success() && err.contains("cannot be opened with this master key"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("channels.toml")).unwrap(), before);
}

/// `paygate client … query` against nothing: enough to load the configuration.
fn load_config(config: &Path, key: Option<&str>) -> std::process::Output {
    let mut cmd = paygate();
    cmd.args(["client", "--config"]).arg(config).args(["--url", "http://127.0.0.1:1", "query", "--order-no", "x"]);
    match key {
        Some(k) => cmd.env("PAYGATE_MASTER_KEY", k),
        None => cmd.env_remove("PAYGATE_MASTER_KEY"),
    };
    cmd.output().unwrap()
}

#[test]
fn production_mode_refuses_the_demo_key_and_token() {
    let data = tempfile::tempdir().unwrap();
    let out = BinNode::command(data.path(), free_port(), &[]).arg("--production").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("demo master key"), "{err}");

    // A real key, but still the demo admin token.
    let key_hex = "5a".repeat(32);
    let config = tempfile::tempdir().unwrap();
    config_sealed_with(&key_hex, config.path());
    let env = [("PAYGATE_MASTER_KEY", key_hex.as_str())];
    let out = BinNode::command_with_config(config.path(), data.path(), free_port(), &env)
        .arg("--production")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.token"));

    // A real key and token: the sandbox channel (anyone can mark its orders paid) and
    // the built-in simulator are refused in turn.
    let admin = MasterKey::from_hex(&key_hex).unwrap().seal("a-real-admin-token-0123456789");
    let env = [("PAYGATE_MASTER_KEY", key_hex.as_str()), ("PAYGATE_ADMIN__TOKEN", admin.as_str())];
    let production = |config: &std::path::Path| {
        let out =
            BinNode::command_with_config(config, data.path(), free_port(), &env).arg("--production").output().unwrap();
        assert!(!out.status.success(), "refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(production(config.path()).contains("sandbox provider"));
    let channels = config.path().join("channels.toml");
    let mut table: toml::Table = std::fs::read_to_string(&channels).unwrap().parse().unwrap();
    if let Some(toml::Value::Array(list)) = table.get_mut("channels") {
        list.retain(|c| c.get("provider").and_then(|p| p.as_str()) != Some("sandbox"));
    }
    std::fs::write(&channels, toml::to_string(&table).unwrap()).unwrap();
    let err = production(config.path());
    assert!(err.contains("gateway_url is \"builtin\""), "{err}");
}

#[test]
fn an_empty_or_unreadable_channels_or_merchants_file_stops_the_start_by_name() {
    for (file, contents) in [("channels.toml", ""), ("merchants.toml", "# nothing\n"), ("channels.toml", "[[[")] {
        let config = tempfile::tempdir().unwrap();
        copy_dir(&config_dir(), config.path());
        std::fs::write(config.path().join(file), contents).unwrap();
        let err = String::from_utf8_lossy(&load_config(config.path(), None).stderr).into_owned();
        assert!(err.contains(file), "{file} {contents:?}: {err}");
    }
    let config = tempfile::tempdir().unwrap();
    copy_dir(&config_dir(), config.path());
    std::fs::remove_file(config.path().join("merchants.toml")).unwrap();
    let err = String::from_utf8_lossy(&load_config(config.path(), None).stderr).into_owned();
    assert!(err.contains("merchants.toml"), "{err}");
}

#[test]
fn a_configuration_sealed_under_a_real_key_runs_only_with_that_key() {
    let key_hex = "7c".repeat(32);
    let config = tempfile::tempdir().unwrap();
    config_sealed_with(&key_hex, config.path());
    // Without the key (so with the demo key) the sealed values do not open.
    let err = String::from_utf8_lossy(&load_config(config.path(), None).stderr).into_owned();
    assert!(err.contains("cannot be opened with this master key"), "{err}");
    assert!(err.contains("admin.token"), "names what failed: {err}");
    // With it, they do (the request then fails to connect, which is fine here).
    let err = String::from_utf8_lossy(&load_config(config.path(), Some(&key_hex)).stderr).into_owned();
    assert!(!err.contains("master key"), "{err}");

    // And a node started with it, in production mode, serves requests signed with the
    // opened secret.
    let data = tempfile::tempdir().unwrap();
    let admin = MasterKey::from_hex(&key_hex).unwrap().seal("a-real-admin-token-0123456789");
    let env = [("PAYGATE_MASTER_KEY", key_hex.as_str()), ("PAYGATE_ADMIN__TOKEN", admin.as_str())];
    let node = BinNode::start_with_config(config.path(), data.path(), &env);
    let a = node.client().pay("SEALED1", "1.00");
    assert_eq!(a.code(), "SUCCESS", "{:?}", a.json);
    // The admin API takes the opened token, and nothing else.
    let admin_call = |token: &str| {
        let url = format!("{}/admin/sandbox/settings", node.url);
        match ureq::get(&url).set("authorization", &format!("Bearer {token}")).call() {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(s, _)) => s,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(admin_call("a-real-admin-token-0123456789"), 200);
    assert_eq!(admin_call(&admin), 401, "the sealed text is not the token");
}

#[test]
fn a_plain_text_admin_token_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let env = [("PAYGATE_ADMIN__TOKEN", "plain-admin-token-0123456789")];
    let out = BinNode::command(data.path(), free_port(), &env).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.token") && err.contains("must be sealed"), "{err}");
    assert!(!err.contains("plain-admin-token"), "{err}");
}

#[test]
fn plain_text_secrets_are_refused() {
    let config = tempfile::tempdir().unwrap();
    copy_dir(&config_dir(), config.path());
    let path = config.path().join("merchants.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let first = text.lines().find(|l| l.starts_with("secret = ")).unwrap().to_owned();
    std::fs::write(&path, text.replace(&first, "secret = \"plain-text-secret-0123456789\"")).unwrap();
    let out = load_config(config.path(), None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("must be sealed"), "{err}");
    assert!(!err.contains("plain-text-secret"), "the value itself is never echoed: {err}");
}

#[test]
fn secrets_never_reach_the_log_or_any_answer() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = BinNode::command(data.path(), port, &[("RUST_LOG", "debug")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut node = BinNode { child, url: format!("http://127.0.0.1:{port}") };
    let up = eventually(std::time::Duration::from_secs(30), || ureq::get(&format!("{}/healthz", node.url)).call().ok());
    assert!(up.is_some());
    let c = node.client();
    let a = c.pay("LOG1", "1.00");
    assert_eq!(a.code(), "SUCCESS");
    // Through every real channel too, so their keys are in use while the log is watched.
    for (no, method) in [
        ("LOG2", "ALIPAY"),
        ("LOG3", "WECHAT_PAY"),
        ("LOG4", "WECHAT_PAY"),
        ("LOG5", "WECHAT_PAY"),
        ("LOG6", "UNION_PAY"),
    ] {
        let mut p = Client::pay_params(no, "1.00");
        p.insert("pay_method".into(), method.into());
        assert_eq!(c.call("/api/v1/payment/pay", p).code(), "SUCCESS");
    }
    let q = c.query_no("LOG1");
    let wrong = Client::new(&node.url, MERCHANT, "wrong-secret-wrong-secret").query_no("LOG1");
    assert_eq!(wrong.code(), "SIGN_ERROR");
    let openapi = ureq::get(&format!("{}/openapi.json", node.url)).call().unwrap().into_string().unwrap();
    let metrics = ureq::get(&format!("{}/metrics", node.url)).call().unwrap().into_string().unwrap();
    node.child.kill().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(node.child.stdout.as_mut().unwrap(), &mut log).unwrap();
    std::io::Read::read_to_string(node.child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("DEBUG"), "the debug log was captured");
    let answers = [a.json.to_string(), q.json.to_string(), wrong.json.to_string(), openapi, metrics];
    // Every channel secret as opened, and for a PEM key a line of its body.
    let config = test_config(data.path());
    let mut secrets: Vec<String> = vec![SECRET.into(), LEGACY_SECRET.into(), "sandbox-notify-secret-0123456789".into()];
    for ch in &config.channels {
        for (name, value) in &ch.settings {
            if let (true, Some(v)) = (paygate::secrets::is_secret_setting(name), value.as_str()) {
                secrets.push(v.lines().nth(3).unwrap_or(v).to_owned());
            }
        }
    }
    assert!(secrets.len() >= 7, "the sandbox, Alipay and both WeChat channels' secrets: {}", secrets.len());
    for text in answers.iter().chain(std::iter::once(&log)) {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "a secret leaked");
        }
    }
}
