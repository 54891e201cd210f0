//! Fitting the risk score: a model fitted to the seeded synthetic history tells fraud
//! from legitimate payments on the rows it did not see, and what `paygate risk train`
//! writes is a `[risk.model]` section the node loads.

use std::process::Command;

use paygate::risk_train::{model_toml, synth, train, Synth};
use paygate_actors::risk::model::Feature;
use paygate_actors::risk::rules::RiskRules;

#[derive(serde::Deserialize)]
struct File {
    risk: RiskRules,
}

#[test]
fn a_model_fitted_to_the_synthetic_history_separates_fraud_on_held_out_rows() {
    let csv = synth(Synth { rows: 6_000, fraud_rate: 0.05, seed: 7 }).unwrap();
    let t = train(&csv, 0.2, 7, 0.5, 0.98).unwrap();
    assert_eq!(t.rows, (4_800, 1_200));
    assert!(t.auc > 0.95, "held-out AUC {}", t.auc);
    let (tp, fp, tn, fn_) = t.confusion;
    assert_eq!(tp + fp + tn + fn_, 1_200);
    assert!(tp > fn_ && fp * 20 < tn, "{:?}", t.confusion);
    for f in [Feature::DeviceCount1m, Feature::RegionChange, Feature::UserAmountZ] {
        assert!(t.model.weights[&f] > 0.0, "{f:?} should weigh towards fraud: {:?}", t.model.weights);
    }
    // The section round-trips into the configuration exactly.
    let rules = toml::from_str::<File>(&model_toml(&t, "synthetic")).unwrap().risk;
    assert_eq!(rules.model, t.model);
    assert!(rules.check().is_ok());
}

#[test]
fn the_cli_makes_a_history_and_fits_it() {
    let dir = tempfile::tempdir().unwrap();
    let (history, model) = (dir.path().join("history.csv"), dir.path().join("model.toml"));
    let bin = env!("CARGO_BIN_EXE_paygate");
    let run = |args: &[&str]| {
        let out = Command::new(bin).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["risk", "synth", "--rows", "3000", "--seed", "3", "--out", history.to_str().unwrap()]);
    let first = std::fs::read(&history).unwrap();
    run(&["risk", "synth", "--rows", "3000", "--seed", "3", "--out", history.to_str().unwrap()]);
    assert_eq!(std::fs::read(&history).unwrap(), first, "the seed makes the file");
    let report = run(&["risk", "train", "--input", history.to_str().unwrap(), "--out", model.to_str().unwrap()]);
    let auc: f64 = report
        .lines()
        .find_map(|l| l.strip_prefix("held-out AUC: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(auc > 0.95, "{report}");
    let rules = toml::from_str::<File>(&std::fs::read_to_string(&model).unwrap()).unwrap().risk;
    assert!(rules.check().is_ok());
    assert_eq!(rules.model.review_at, 0.8);

    // A history that is not one is refused with a reason, not a panic.
    std::fs::write(&history, "amount_log,label\n1.0,yes\n").unwrap();
    let out = Command::new(bin).args(["risk", "train", "--input", history.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("label"), "{}", String::from_utf8_lossy(&out.stderr));
}
