//! The risk score: a logistic model over the features of a payment. Its weights are
//! configuration (`[risk.model]`), fitted from labelled history by `paygate risk train`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the score looks at. Counts are of the payments before this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// `ln(1 + amount)`, amount in major units.
    AmountLog,
    /// Deviations of the amount above the user's norm (0 without history; at most 10).
    UserAmountZ,
    /// Deviations of the amount above the merchant's norm (at most 10).
    MerchantAmountZ,
    /// The user's payments in the last hour.
    #[serde(rename = "user_count_1h")]
    UserCount1h,
    /// The user's payments in the last day.
    #[serde(rename = "user_count_1d")]
    UserCount1d,
    /// The device's payments in the last minute.
    #[serde(rename = "device_count_1m")]
    DeviceCount1m,
    /// The device's payments in the last hour.
    #[serde(rename = "device_count_1h")]
    DeviceCount1h,
    /// The IP address's payments in the last hour.
    #[serde(rename = "ip_count_1h")]
    IpCount1h,
    /// Distinct users of the device today.
    #[serde(rename = "device_users_1d")]
    DeviceUsers1d,
    /// Distinct users of the IP address today.
    #[serde(rename = "ip_users_1d")]
    IpUsers1d,
    /// 1 when the user has no payment on record.
    NewUser,
    /// 1 when the payment comes from another region than the user's last one.
    RegionChange,
}

impl Feature {
    /// Every feature, in the order of [`Features`].
    pub const ALL: [Feature; 12] = [
        Feature::AmountLog,
        Feature::UserAmountZ,
        Feature::MerchantAmountZ,
        Feature::UserCount1h,
        Feature::UserCount1d,
        Feature::DeviceCount1m,
        Feature::DeviceCount1h,
        Feature::IpCount1h,
        Feature::DeviceUsers1d,
        Feature::IpUsers1d,
        Feature::NewUser,
        Feature::RegionChange,
    ];

    /// The configuration and column name.
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::AmountLog => "amount_log",
            Feature::UserAmountZ => "user_amount_z",
            Feature::MerchantAmountZ => "merchant_amount_z",
            Feature::UserCount1h => "user_count_1h",
            Feature::UserCount1d => "user_count_1d",
            Feature::DeviceCount1m => "device_count_1m",
            Feature::DeviceCount1h => "device_count_1h",
            Feature::IpCount1h => "ip_count_1h",
            Feature::DeviceUsers1d => "device_users_1d",
            Feature::IpUsers1d => "ip_users_1d",
            Feature::NewUser => "new_user",
            Feature::RegionChange => "region_change",
        }
    }

    /// The feature named `name`.
    pub fn parse(name: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.as_str() == name)
    }

    fn index(self) -> usize {
        Feature::ALL.iter().position(|f| *f == self).unwrap_or(0)
    }
}

/// The features of one payment, in [`Feature::ALL`] order.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Features(pub [f64; Feature::ALL.len()]);

impl Features {
    /// One feature's value.
    pub fn get(&self, f: Feature) -> f64 {
        self.0.get(f.index()).copied().unwrap_or(0.0)
    }

    /// Sets one feature.
    pub fn set(&mut self, f: Feature, value: f64) {
        if let Some(v) = self.0.get_mut(f.index()) {
            *v = value;
        }
    }
}

/// A logistic model: `score = 1 / (1 + e^-(bias + Σ weight·feature))`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// The intercept.
    #[serde(default)]
    pub bias: f64,
    /// Weights by feature name; a feature not named weighs 0.
    #[serde(default)]
    pub weights: BTreeMap<Feature, f64>,
    /// A score at or above this is REVIEW.
    pub review_at: f64,
    /// A score at or above this is DENY.
    pub deny_at: f64,
}

impl Default for Model {
    /// Weighs nothing: every score is 0.5, below both thresholds.
    fn default() -> Self {
        Model { bias: 0.0, weights: BTreeMap::new(), review_at: 2.0, deny_at: 2.0 }
    }
}

impl Model {
    /// The weights in [`Feature::ALL`] order, for scoring without lookups.
    pub fn dense(&self) -> DenseModel {
        let mut w = [0.0; Feature::ALL.len()];
        for (f, weight) in &self.weights {
            if let Some(slot) = w.get_mut(f.index()) {
                *slot = *weight;
            }
        }
        DenseModel { bias: self.bias, weights: w }
    }

    /// Why the model cannot be used, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        let finite = self.bias.is_finite() && self.weights.values().all(|w| w.is_finite());
        if !finite {
            return Err("risk.model: bias and weights must be finite numbers".into());
        }
        let unit = |x: f64| (0.0..=2.0).contains(&x);
        if !unit(self.review_at) || !unit(self.deny_at) || self.review_at > self.deny_at {
            return Err(
                "risk.model: review_at and deny_at are scores in 0..1 (above 1: never), review_at <= deny_at".into()
            );
        }
        Ok(())
    }
}

/// A [`Model`] laid out for scoring.
#[derive(Debug, Clone, Copy)]
pub struct DenseModel {
    bias: f64,
    weights: [f64; Feature::ALL.len()],
}

impl DenseModel {
    /// The score of `features`, in 0..1.
    pub fn score(&self, features: &Features) -> f64 {
        let z = self.weights.iter().zip(features.0.iter()).fold(self.bias, |acc, (w, x)| acc + w * x);
        1.0 / (1.0 + (-z).exp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_grows_with_weighted_features_and_names_round_trip() {
        let model = Model {
            bias: -4.0,
            weights: [(Feature::DeviceCount1m, 0.5), (Feature::NewUser, 1.0)].into_iter().collect(),
            review_at: 0.5,
            deny_at: 0.9,
        };
        assert!(model.check().is_ok());
        let dense = model.dense();
        let mut f = Features::default();
        let calm = dense.score(&f);
        assert!((calm - 1.0 / (1.0 + 4f64.exp())).abs() < 1e-12);
        f.set(Feature::DeviceCount1m, 12.0);
        f.set(Feature::NewUser, 1.0);
        assert!(dense.score(&f) > 0.9, "{}", dense.score(&f));
        for feature in Feature::ALL {
            assert_eq!(Feature::parse(feature.as_str()), Some(feature));
            assert_eq!(serde_json::to_value(feature).unwrap(), feature.as_str(), "one name");
        }
        let bad = Model { review_at: 0.9, deny_at: 0.5, ..model.clone() };
        assert!(bad.check().is_err());
        let nan = Model { bias: f64::NAN, ..model };
        assert!(nan.check().is_err());
    }
}
