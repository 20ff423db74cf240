//! Kubernetes-style quantities: memory (`512Mi`, `1Gi`, `500M`, bytes) and CPU (`"0.5"`,
//! `2`, `500m`), parsed into bytes and billionths of a CPU.

/// Docker refuses memory limits below 6 MiB; say so before the engine does.
const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

/// Parses a memory quantity into bytes: `512Mi`, `1Gi`, `500M`, `1.5G`, `1024`; at least
/// what the engine takes as a memory limit.
pub fn parse_memory(text: &str) -> Result<i64, String> {
    let bytes = parse_bytes(text)?;
    if (bytes as u64) < MIN_MEMORY_BYTES {
        return Err("is below the engine's minimum of 6Mi".into());
    }
    Ok(bytes)
}

/// Parses a quantity of bytes: `512Mi`, `1Gi`, `500M`, `1.5G`, `1024`.
pub fn parse_bytes(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 =
        match unit {
            "" => 1.0,
            "k" | "K" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "Ki" => 1024.0,
            "Mi" => 1024.0 * 1024.0,
            "Gi" => 1024.0 * 1024.0 * 1024.0,
            "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => return Err(
                "has an unknown unit: use bytes or one of Ki, Mi, Gi, Ti, k, M, G, T (e.g. 512Mi)"
                    .into(),
            ),
        };
    let n: f64 = num
        .parse()
        .map_err(|_| "is not a memory quantity such as 512Mi or 1Gi".to_string())?;
    let bytes = (n * mult).round();
    if !bytes.is_finite() || bytes > i64::MAX as f64 {
        return Err("is too large".into());
    }
    Ok(bytes as i64)
}

/// Parses a CPU quantity into billionths of a CPU: `"0.5"`, `2`, `500m`.
pub fn parse_cpus(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let (num, scale) = match t.strip_suffix('m') {
        Some(milli) => (milli, 1e6),
        None => (t, 1e9),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite())
        .ok_or_else(|| "is not a CPU quantity such as \"0.5\", 2 or 500m".to_string())?;
    let nano = (n * scale).round();
    if nano < 1e7 {
        return Err("is below the minimum of 0.01 CPU".into());
    }
    if nano > 1024.0 * 1e9 {
        return Err("is more than 1024 CPUs".into());
    }
    Ok(nano as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("500M"), Ok(500_000_000));
        assert_eq!(parse_memory("8388608"), Ok(8_388_608));
        assert!(parse_memory("12Qi").is_err());
        assert_eq!(parse_cpus("500m"), Ok(500_000_000));
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert!(parse_cpus("-1").is_err());
    }
}
