//! Checks both services apply to their settings.

/// `Ok` for a finite, positive number of seconds; otherwise the reason.
pub fn positive_seconds(secs: f64) -> Result<(), String> {
    if secs.is_finite() && secs > 0.0 {
        Ok(())
    } else {
        Err(format!("must be a positive number of seconds, got {secs}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_positive_finite_seconds_pass() {
        assert!(positive_seconds(0.5).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(positive_seconds(bad).is_err(), "{bad}");
        }
    }
}
