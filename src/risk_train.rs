//! Fitting risk control's score: `paygate risk synth` writes a labelled synthetic
//! history anyone can reproduce from a seed, `paygate risk train` fits the logistic
//! model's weights to a labelled history (linfa's logistic regression), reports how it
//! does on a held-out part, and writes the `[risk.model]` section to use.
//!
//! A history is CSV: a header of feature names ([`Feature::as_str`], any subset, any
//! order) and `label` (1: the payment was fraud, 0: it was not), one payment per row.

use std::fmt::Write as _;

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use paygate_actors::risk::model::{Feature, Model};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How a synthetic history is made.
#[derive(Debug, Clone, Copy)]
pub struct Synth {
    /// Payments.
    pub rows: usize,
    /// The share that is fraud.
    pub fraud_rate: f64,
    /// The seed: the same seed and sizes make the same file.
    pub seed: u64,
}

/// |N(0, 1)|, by Box–Muller.
fn half_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()).abs()
}

/// The features of one synthetic payment. Legitimate payments: amounts around 100
/// (log-normal), few payments per user, device and address, a user new one time in
/// seven, a region change one time in thirty. Fraud: amounts around 2,000, amounts far
/// above the user's usual, bursts from one device, devices and addresses shared by
/// many users, new users and region changes far more often. Each count is the
/// integer part of a scaled |N(0, 1)|.
fn synthetic(rng: &mut StdRng, fraud: bool) -> [f64; Feature::ALL.len()] {
    let (amount_mu, z_user, z_merchant, burst, shared, new_user, region) = if fraud {
        (2000f64.ln(), 3.0, 2.0, 8.0, 4.0, 0.6, 0.35)
    } else {
        (100f64.ln(), 0.8, 0.6, 0.8, 0.5, 0.15, 0.03)
    };
    let mut n = |scale: f64| (half_normal(rng) * scale).floor();
    let amount = (amount_mu + n(1.0) * if fraud { 1.2 } else { 1.0 }).exp();
    let user_1h = n(if fraud { 6.0 } else { 1.5 });
    let device_1m = n(burst);
    let mut f = [0.0; Feature::ALL.len()];
    let mut set = |feature: Feature, v: f64| {
        if let Some(slot) = Feature::ALL.iter().position(|x| *x == feature).and_then(|i| f.get_mut(i)) {
            *slot = v;
        }
    };
    set(Feature::AmountLog, amount.ln_1p());
    set(Feature::UserAmountZ, (half_normal(rng) * z_user + if fraud { 1.0 } else { 0.0 }).min(10.0));
    set(Feature::MerchantAmountZ, (half_normal(rng) * z_merchant).min(10.0));
    set(Feature::UserCount1h, user_1h);
    set(Feature::UserCount1d, user_1h + (half_normal(rng) * 3.0).floor());
    set(Feature::DeviceCount1m, device_1m);
    set(Feature::DeviceCount1h, device_1m + (half_normal(rng) * if fraud { 15.0 } else { 2.0 }).floor());
    set(Feature::IpCount1h, (half_normal(rng) * if fraud { 30.0 } else { 5.0 }).floor());
    set(Feature::DeviceUsers1d, 1.0 + (half_normal(rng) * shared).floor());
    set(Feature::IpUsers1d, 1.0 + (half_normal(rng) * if fraud { 12.0 } else { 3.0 }).floor());
    set(Feature::NewUser, if rng.gen_bool(new_user) { 1.0 } else { 0.0 });
    set(Feature::RegionChange, if rng.gen_bool(region) { 1.0 } else { 0.0 });
    f
}

/// A labelled synthetic history, as CSV.
pub fn synth(s: Synth) -> Result<String, String> {
    if !(0.0..1.0).contains(&s.fraud_rate) || s.rows == 0 {
        return Err("rows must be at least 1 and the fraud rate within 0..1".into());
    }
    let mut rng = StdRng::seed_from_u64(s.seed);
    let mut out = String::new();
    let header: Vec<&str> = Feature::ALL.iter().map(|f| f.as_str()).chain(["label"]).collect();
    out.push_str(&header.join(","));
    out.push('\n');
    for _ in 0..s.rows {
        let fraud = rng.gen_bool(s.fraud_rate);
        let values = synthetic(&mut rng, fraud);
        for v in values {
            let _ = write!(out, "{v},");
        }
        out.push_str(if fraud { "1\n" } else { "0\n" });
    }
    Ok(out)
}

/// A history read: the features named in its header, their values, the labels.
struct History {
    features: Vec<Feature>,
    x: Vec<Vec<f64>>,
    y: Vec<bool>,
}

fn read(csv_text: &str) -> Result<History, String> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(csv_text.as_bytes());
    let header = reader.headers().map_err(|e| format!("header: {e}"))?.clone();
    let mut features = Vec::new();
    let mut label_at = None;
    for (i, name) in header.iter().enumerate() {
        match (name, Feature::parse(name)) {
            ("label", _) => label_at = Some(i),
            (_, Some(f)) => features.push((i, f)),
            (other, None) => return Err(format!("header: {other:?} is neither a feature nor label")),
        }
    }
    let label_at = label_at.ok_or("header: no label column")?;
    if features.is_empty() {
        return Err("header: no feature column".into());
    }
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (n, record) in reader.records().enumerate() {
        let record = record.map_err(|e| format!("row {}: {e}", n + 2))?;
        let number = |i: usize| -> Result<f64, String> {
            let text = record.get(i).unwrap_or_default();
            text.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("row {}: {text:?} is not a number", n + 2))
        };
        let row = features.iter().map(|(i, _)| number(*i)).collect::<Result<Vec<_>, _>>()?;
        let label = match record.get(label_at).unwrap_or_default() {
            "1" => true,
            "0" => false,
            other => return Err(format!("row {}: label {other:?} must be 0 or 1", n + 2)),
        };
        x.push(row);
        y.push(label);
    }
    Ok(History { features: features.into_iter().map(|(_, f)| f).collect(), x, y })
}

/// What training found.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The fitted model (thresholds as asked).
    pub model: Model,
    /// Rows fitted on and held out.
    pub rows: (usize, usize),
    /// The area under the ROC curve on the held-out part.
    pub auc: f64,
    /// On the held-out part, at the review threshold: true positives, false
    /// positives, true negatives, false negatives.
    pub confusion: (usize, usize, usize, usize),
}

/// The area under the ROC curve: the chance a fraud scores above a legitimate payment
/// (ties count half), from the ranks.
pub fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut ranked: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut positives, mut i) = (0.0, 0usize, 0usize);
    while i < ranked.len() {
        let value = ranked.get(i).map_or(0.0, |r| r.0);
        let mut j = i;
        while ranked.get(j + 1).is_some_and(|next| next.0 == value) {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            if ranked.get(k).is_some_and(|r| r.1) {
                rank_sum += average_rank;
                positives += 1;
            }
        }
        i = j + 1;
    }
    let negatives = ranked.len() - positives;
    if positives == 0 || negatives == 0 {
        return 0.5;
    }
    let p = positives as f64;
    (rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64)
}

/// Fits the model to `csv_text`, holding out `holdout` of the rows (shuffled with
/// `seed`) to judge it; the thresholds are `review_at` and `deny_at`.
pub fn train(csv_text: &str, holdout: f64, seed: u64, review_at: f64, deny_at: f64) -> Result<Trained, String> {
    let h = read(csv_text)?;
    if !(0.05..=0.5).contains(&holdout) {
        return Err("holdout must be within 0.05..0.5".into());
    }
    let mut order: Vec<usize> = (0..h.y.len()).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    let held = ((order.len() as f64) * holdout).round() as usize;
    let (test, fit) = order.split_at(held.min(order.len()));
    let columns = h.features.len();
    let matrix = |rows: &[usize]| -> Result<(Array2<f64>, Array1<usize>), String> {
        let flat: Vec<f64> = rows.iter().filter_map(|r| h.x.get(*r)).flatten().copied().collect();
        let x = Array2::from_shape_vec((rows.len(), columns), flat).map_err(|e| e.to_string())?;
        let y = rows.iter().map(|r| usize::from(h.y.get(*r).copied().unwrap_or(false))).collect();
        Ok((x, y))
    };
    let (x_fit, y_fit) = matrix(fit)?;
    let (x_test, y_test) = matrix(test)?;
    let both = |y: &Array1<usize>| y.iter().any(|v| *v == 1) && y.iter().any(|v| *v == 0);
    if !both(&y_fit) || !both(&y_test) {
        return Err("the history needs fraud and legitimate payments in both the fitted and the held-out part".into());
    }
    let fitted = LogisticRegression::default()
        .max_iterations(500)
        .fit(&Dataset::new(x_fit, y_fit))
        .map_err(|e| format!("fitting: {e}"))?;
    // linfa's "positive" class is the more frequent one — the legitimate payments —
    // so its weights are turned around to score fraud.
    let sign = if fitted.labels().pos.class == 1 { 1.0 } else { -1.0 };
    let (bias, params) = (sign * fitted.intercept(), fitted.params().mapv(|w| sign * w));
    let labels: Vec<bool> = y_test.iter().map(|v| *v == 1).collect();
    let scores: Vec<f64> = (x_test.dot(&params) + bias).mapv(|z| 1.0 / (1.0 + (-z).exp())).to_vec();
    let mut confusion = (0, 0, 0, 0);
    for (score, fraud) in scores.iter().zip(&labels) {
        match (*score >= review_at, *fraud) {
            (true, true) => confusion.0 += 1,
            (true, false) => confusion.1 += 1,
            (false, false) => confusion.2 += 1,
            (false, true) => confusion.3 += 1,
        }
    }
    let weights = h.features.iter().copied().zip(params.iter().copied()).collect();
    let model = Model { bias, weights, review_at, deny_at };
    model.check()?;
    Ok(Trained { model, rows: (fit.len(), test.len()), auc: auc(&scores, &labels), confusion })
}

/// The `[risk.model]` section for `risk.toml`.
pub fn model_toml(t: &Trained, source: &str) -> String {
    let mut out = format!(
        "# Fitted by `paygate risk train` from {source}: {} rows fitted, {} held out, held-out AUC {:.4}.\n\
         [risk.model]\nbias = {}\nreview_at = {}\ndeny_at = {}\n\n[risk.model.weights]\n",
        t.rows.0, t.rows.1, t.auc, t.model.bias, t.model.review_at, t.model.deny_at
    );
    for (feature, weight) in &t.model.weights {
        let _ = writeln!(out, "{} = {weight}", feature.as_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_pairs_ranked_right_and_ties_as_half() {
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), 1.0);
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), 0.0);
        assert_eq!(auc(&[0.5, 0.5], &[false, true]), 0.5);
        assert!((auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn the_same_seed_makes_the_same_history_and_bad_histories_are_refused() {
        let s = Synth { rows: 200, fraud_rate: 0.1, seed: 42 };
        assert_eq!(synth(s), synth(s));
        assert_ne!(synth(s), synth(Synth { seed: 43, ..s }));
        assert!(read("amount_log,label\n1.0,2\n").is_err());
        assert!(read("amount_log,colour,label\n1.0,1,0\n").is_err());
        assert!(read("amount_log\n1.0\n").is_err());
        assert!(read("amount_log,label\nNaN,0\n").is_err());
    }
}
