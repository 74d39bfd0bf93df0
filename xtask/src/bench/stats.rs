//! Statistics: the median and spread of a set of figures.
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub(super) struct Spread {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

impl Spread {
    pub(super) fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    /// "median (min–max)".
    pub(super) fn show(&self, f: impl Fn(f64) -> String) -> String {
        format!("{} ({}–{})", f(self.median), f(self.min), f(self.max))
    }
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_odd_and_an_even_count() {
        let s = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of([4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert_eq!(Spread::of([7.0]).unwrap().median, 7.0);
    }

    #[test]
    fn leaves_out_what_is_not_a_number() {
        // A ratio over a run of 0 s, a rate over no connections.
        let s = Spread::of([1.0, f64::NAN, 0.5, f64::INFINITY]).unwrap();
        assert_eq!((s.median, s.min, s.max), (0.75, 0.5, 1.0));
        assert!(Spread::of([f64::NAN]).is_none());
        assert!(Spread::of([]).is_none());
    }

    #[test]
    fn shows_the_median_and_its_range() {
        let s = Spread::of([0.912, 0.95, 0.97]).unwrap();
        assert_eq!(s.show(|v| format!("{v:.2}")), "0.95 (0.91–0.97)");
    }

    #[test]
    fn milliseconds() {
        assert_eq!(ms(Duration::from_micros(2_500)), 2.5);
    }
}
