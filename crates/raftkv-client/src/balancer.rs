//! `SmoothWeightedRoundRobin`: nginx's smooth weighted round robin, over whichever endpoints are
//! eligible at the moment of the pick.
//!
//! Each pick adds every eligible endpoint's weight to its running score, takes the highest
//! score, and subtracts the total weight from the winner. Over any run of picks each endpoint
//! gets its share of the weight, spread out rather than in bursts (weights 5,1,1 give
//! `a a b a c a a`, not `a a a a a b c`). The caller decides eligibility (closed breakers;
//! backups only when no primary is eligible).

/// Scores for smooth weighted round robin, one per endpoint index.
#[derive(Debug, Clone, Default)]
pub struct SmoothWeightedRoundRobin {
    scores: Vec<i64>,
}

impl SmoothWeightedRoundRobin {
    /// Picks one of `candidates` (endpoint index, weight); `None` when there are none.
    pub fn pick(&mut self, candidates: &[(usize, u32)]) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let needed = candidates.iter().map(|(i, _)| i + 1).max().unwrap_or(0);
        if self.scores.len() < needed {
            self.scores.resize(needed, 0);
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for &(i, weight) in candidates {
            let w = i64::from(weight.max(1));
            self.scores[i] += w;
            total += w;
            if best.is_none_or(|b| self.scores[i] > self.scores[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.scores[chosen] -= total;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_weights_and_are_spread() {
        let mut rr = SmoothWeightedRoundRobin::default();
        let candidates = [(0, 5), (1, 1), (2, 1)];
        let picks: Vec<usize> = (0..7).map(|_| rr.pick(&candidates).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0], "nginx's sequence for 5,1,1");

        let mut counts = [0usize; 3];
        for _ in 0..7000 {
            counts[rr.pick(&candidates).unwrap()] += 1;
        }
        assert_eq!(counts, [5000, 1000, 1000]);
    }

    #[test]
    fn equal_weights_alternate() {
        let mut rr = SmoothWeightedRoundRobin::default();
        let candidates = [(0, 1), (1, 1), (2, 1)];
        let picks: Vec<usize> = (0..6).map(|_| rr.pick(&candidates).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn ineligible_endpoints_are_skipped_and_return_smoothly() {
        let mut rr = SmoothWeightedRoundRobin::default();
        for _ in 0..10 {
            let p = rr.pick(&[(0, 3), (2, 1)]).unwrap();
            assert_ne!(p, 1, "endpoint 1 is not a candidate");
        }
        let mut counts = [0usize; 3];
        for _ in 0..500 {
            counts[rr.pick(&[(0, 3), (1, 1), (2, 1)]).unwrap()] += 1;
        }
        assert_eq!(counts, [300, 100, 100]);
        assert_eq!(rr.pick(&[]), None);
    }
}
