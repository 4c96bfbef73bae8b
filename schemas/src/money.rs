//! Money as exact decimals: `i128` units of 10^-18 USD, stored as Arrow `Decimal128(38, 18)`.

use crate::SchemaError;

/// Fractional digits of every USD amount in aifinops.
pub const COST_SCALE: i8 = 18;
/// Precision of the Arrow decimal type holding USD amounts.
pub const COST_PRECISION: u8 = 38;
/// 1 USD in cost units.
pub const ONE_USD: i128 = 1_000_000_000_000_000_000;

/// The Arrow type of every USD column.
pub fn cost_type() -> arrow_schema::DataType {
    arrow_schema::DataType::Decimal128(COST_PRECISION, COST_SCALE)
}

/// Parses a decimal number (plain `12.5`, or scientific `2.5e-06` as JSON catalogs write it) into cost units.
/// Fails when the value has more than 18 fractional digits (it would not be exact) or does not fit.
pub fn parse_usd(what: &str, text: &str) -> Result<i128, SchemaError> {
    let err = |reason: &str| SchemaError::Decimal {
        what: what.to_string(),
        value: text.to_string(),
        reason: reason.to_string(),
    };
    let t = text.trim();
    if t.is_empty() {
        return Err(err("empty"));
    }
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i32>().map_err(|_| err("bad exponent"))?),
        None => (t, 0),
    };
    if !(-80..=80).contains(&exp) {
        return Err(err("exponent out of range"));
    }
    let (neg, digits) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa.strip_prefix('+').unwrap_or(mantissa)),
    };
    let (int_part, frac_part) = match digits.find('.') {
        Some(i) => (&digits[..i], &digits[i + 1..]),
        None => (digits, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(err("no digits"));
    }
    if !int_part.bytes().all(|b| b.is_ascii_digit()) || !frac_part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err("not a decimal number"));
    }
    // value = int_part.frac_part * 10^exp ; units = value * 10^18
    let all: String = format!("{int_part}{frac_part}");
    let all = all.trim_start_matches('0');
    let shift = COST_SCALE as i32 + exp - frac_part.len() as i32;
    let mut units: i128 = 0;
    if !all.is_empty() {
        let (kept, dropped) = if shift >= 0 {
            (all, "")
        } else {
            let cut = all.len() as i64 + shift as i64;
            if cut <= 0 { ("", all) } else { all.split_at(cut as usize) }
        };
        if dropped.bytes().any(|b| b != b'0') {
            return Err(err("more than 18 fractional digits"));
        }
        for b in kept.bytes() {
            units = units
                .checked_mul(10)
                .and_then(|u| u.checked_add((b - b'0') as i128))
                .ok_or_else(|| err("too large"))?;
        }
        if shift > 0 {
            let p = 10i128.checked_pow(shift as u32).ok_or_else(|| err("too large"))?;
            units = units.checked_mul(p).ok_or_else(|| err("too large"))?;
        }
    }
    Ok(if neg { -units } else { units })
}

/// Formats cost units as a plain decimal string with all 18 fractional digits trimmed of trailing zeros.
pub fn format_usd(units: i128) -> String {
    let neg = units < 0;
    let u = units.unsigned_abs();
    let int = u / ONE_USD as u128;
    let frac = u % ONE_USD as u128;
    let mut s = format!("{}{}", if neg { "-" } else { "" }, int);
    if frac != 0 {
        let f = format!("{frac:018}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s
}

/// Formats cost units rounded (half away from zero) to `digits` fractional digits, for people.
pub fn format_usd_rounded(units: i128, digits: u32) -> String {
    let step = 10i128.pow(COST_SCALE as u32 - digits);
    let half = step / 2;
    let r = if units >= 0 { (units + half) / step } else { (units - half) / step };
    let neg = r < 0;
    let r = r.unsigned_abs();
    let p = 10u128.pow(digits);
    if digits == 0 {
        return format!("{}{}", if neg { "-" } else { "" }, r);
    }
    format!("{}{}.{:0width$}", if neg { "-" } else { "" }, r / p, r % p, width = digits as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_scientific_prices_exactly() {
        assert_eq!(parse_usd("p", "2.5e-06").unwrap(), 2_500_000_000_000);
        assert_eq!(parse_usd("p", "0.0000025").unwrap(), 2_500_000_000_000);
        assert_eq!(parse_usd("p", "10").unwrap(), 10 * ONE_USD);
        assert_eq!(parse_usd("p", "1.25E-7").unwrap(), 125_000_000_000);
        assert_eq!(parse_usd("p", "-0.5").unwrap(), -ONE_USD / 2);
        assert_eq!(parse_usd("p", "1e-18").unwrap(), 1);
        assert_eq!(parse_usd("p", "0").unwrap(), 0);
    }

    #[test]
    fn rejects_inexact_or_garbage() {
        assert!(parse_usd("p", "1e-19").is_err());
        assert!(parse_usd("p", "abc").is_err());
        assert!(parse_usd("p", "").is_err());
        assert!(parse_usd("p", "1e40").is_err());
        assert!(parse_usd("p", "1e2147483647").is_err());
        assert!(parse_usd("p", "1e-2147483648").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for s in ["0", "12.5", "0.000000000000000001", "-3.25", "123456789.123456789"] {
            assert_eq!(format_usd(parse_usd("x", s).unwrap()), s);
        }
        assert_eq!(format_usd_rounded(parse_usd("x", "1.235").unwrap(), 2), "1.24");
        assert_eq!(format_usd_rounded(parse_usd("x", "0.004").unwrap(), 2), "0.00");
    }
}
