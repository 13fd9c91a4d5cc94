//! Money as integer cents. The domain never sees a float: the API's decimal amounts are parsed
//! here, exactly, into cents (at most two fraction digits, not negative, finite), and written
//! back as decimal numbers.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An amount of money in cents, never negative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i64);

/// Why a decimal amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not a decimal number (NaN, infinity, text).
    #[error("an amount must be a decimal number such as 12.50")]
    NotANumber,
    /// Below zero.
    #[error("an amount must not be negative")]
    Negative,
    /// More than two digits after the point.
    #[error("an amount has at most two digits after the decimal point")]
    TooPrecise,
    /// Above [`Money::MAX`].
    #[error("an amount must be at most 9999999999999.99")]
    TooLarge,
}

impl Money {
    /// Zero.
    pub const ZERO: Money = Money(0);

    /// The largest amount the API takes, 9 999 999 999 999.99: every amount up to it has at
    /// most 15 significant digits, so a JSON number (an IEEE double) carries it exactly; beyond
    /// it, cents would be lost on the way. (The OpenAPI document states it as `maximum`.)
    pub const MAX: Money = Money(999_999_999_999_999);

    /// An amount of `cents`, if not negative.
    pub fn from_cents(cents: i64) -> Result<Self, MoneyError> {
        if cents < 0 { Err(MoneyError::Negative) } else { Ok(Self(cents)) }
    }

    /// The amount a floating-point number (JSON, protobuf `double`) stands for: at most two
    /// fraction digits, not negative.
    pub fn from_f64(v: f64) -> Result<Self, MoneyError> {
        if !v.is_finite() {
            return Err(MoneyError::NotANumber);
        }
        // `Display` prints the shortest decimal that reads back as this float: for a literal
        // such as `9.99` that is the literal itself, so the digits checked are the ones the
        // caller sent.
        Money::parse(&format!("{v}"))
    }

    /// The amount as a floating-point number (protobuf `double`).
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 100.0
    }

    /// The amount in cents.
    pub fn cents(self) -> i64 {
        self.0
    }

    /// Parses a decimal amount such as `12`, `12.5` or `12.50`.
    pub fn parse(text: &str) -> Result<Self, MoneyError> {
        let text = text.trim();
        if text.starts_with('-') {
            return Err(MoneyError::Negative);
        }
        let text = text.strip_prefix('+').unwrap_or(text);
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(fraction) || (text.contains('.') && fraction.is_empty()) {
            return Err(MoneyError::NotANumber);
        }
        // Trailing zeros carry no precision (`1.500` is `1.50`).
        let fraction = fraction.trim_end_matches('0');
        if fraction.len() > 2 {
            return Err(MoneyError::TooPrecise);
        }
        let whole: i64 = whole.parse().map_err(|_| MoneyError::TooLarge)?;
        let fraction: i64 = format!("{fraction:0<2}").parse().map_err(|_| MoneyError::NotANumber)?;
        Self::at_most_max(whole.checked_mul(100).and_then(|c| c.checked_add(fraction)))
    }

    /// `cents` (`None`: overflowed) as an amount of the API, at most [`Money::MAX`].
    fn at_most_max(cents: Option<i64>) -> Result<Self, MoneyError> {
        cents.map(Self).filter(|m| *m <= Self::MAX).ok_or(MoneyError::TooLarge)
    }

    /// Adds, failing on overflow.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    /// `self × n`, failing on overflow.
    pub fn checked_mul(self, n: i64) -> Option<Money> {
        self.0.checked_mul(n).filter(|c| *c >= 0).map(Money)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// On the wire an amount is a JSON number (`12.5`), or a string holding one (`"12.50"`).
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The shortest float that prints as this decimal prints exactly as it (ryu), so the
        // number on the wire is the exact amount; the float exists only in the encoder.
        #[allow(clippy::cast_precision_loss)]
        let value = self.0 as f64 / 100.0;
        serializer.serialize_f64(value)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MoneyVisitor;
        impl Visitor<'_> for MoneyVisitor {
            type Value = Money;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal amount with at most two fraction digits")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Money, E> {
                Money::at_most_max(i64::try_from(v).ok().and_then(|v| v.checked_mul(100))).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Money, E> {
                if v < 0 {
                    return Err(E::custom(MoneyError::Negative));
                }
                Money::at_most_max(v.checked_mul(100)).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Money, E> {
                Money::from_f64(v).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Money, E> {
                Money::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(MoneyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_amounts_parse_exactly_into_cents() {
        assert_eq!(Money::parse("12"), Ok(Money(1200)));
        assert_eq!(Money::parse("12.5"), Ok(Money(1250)));
        assert_eq!(Money::parse("0.07"), Ok(Money(7)));
        assert_eq!(Money::parse("1.500"), Ok(Money(150)));
        assert_eq!(Money::parse("1.005"), Err(MoneyError::TooPrecise));
        assert_eq!(Money::parse("-1"), Err(MoneyError::Negative));
        assert_eq!(Money::parse("NaN"), Err(MoneyError::NotANumber));
        assert_eq!(Money::parse("inf"), Err(MoneyError::NotANumber));
        assert_eq!(Money::parse("1."), Err(MoneyError::NotANumber));
        assert_eq!(Money::parse("99999999999999999999"), Err(MoneyError::TooLarge));
        assert_eq!(Money::parse("9999999999999.99"), Ok(Money::MAX));
        assert_eq!(Money::parse("10000000000000"), Err(MoneyError::TooLarge));
    }

    #[test]
    fn json_numbers_and_strings_are_read_exactly_and_written_as_decimals() {
        let m: Money = serde_json::from_str("9.99").expect("9.99");
        assert_eq!(m.cents(), 999);
        let m: Money = serde_json::from_str("\"0.10\"").expect("string");
        assert_eq!(m.cents(), 10);
        assert_eq!(serde_json::from_str::<Money>("3").expect("integer").cents(), 300);
        assert!(serde_json::from_str::<Money>("9.999").is_err());
        assert!(serde_json::from_str::<Money>("-0.5").is_err());
        assert!(serde_json::from_str::<Money>("1e400").is_err());
        // The largest amount, as a JSON number, arrives to the cent; one cent more is refused.
        assert_eq!(serde_json::from_str::<Money>("9999999999999.99").ok(), Some(Money::MAX));
        assert!(serde_json::from_str::<Money>("10000000000000").is_err());
        assert!(serde_json::from_str::<Money>("10000000000000.0").is_err());
        assert_eq!(serde_json::to_string(&Money(999)).expect("encode"), "9.99");
        assert_eq!(serde_json::to_string(&Money(1000)).expect("encode"), "10.0");
        assert_eq!(Money(5).to_string(), "0.05");
    }
}
