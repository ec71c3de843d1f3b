use super::*;
use proptest::prelude::*;

const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

fn reserve(b: &Arc<BodyBudget>, client: IpAddr, n: u64) -> Option<Permit> {
    let mut p = b.permit(client);
    p.resize(n).then_some(p)
}

#[test]
fn reservations_fit_the_limit_and_come_back_on_drop() {
    let b = BodyBudget::new(10, 10);
    let a = reserve(&b, A, 6).expect("fits");
    assert!(reserve(&b, B, 5).is_none(), "6 + 5 > 10");
    let c = reserve(&b, B, 4).expect("exactly the limit");
    assert_eq!(b.held(), 10);
    drop(a);
    assert_eq!(b.held(), 4);
    assert!(reserve(&b, A, 6).is_some());
    drop(c);
    assert_eq!(b.held(), 0);
    assert!(reserve(&b, A, 11).is_none());
    assert!(reserve(&b, A, u64::MAX).is_none(), "no overflow");
    assert!(b.clients.lock().unwrap().is_empty(), "no entry left behind");
}

#[test]
fn a_permit_grows_and_shrinks_with_what_it_holds() {
    let b = BodyBudget::new(10, 10);
    let mut p = b.permit(A);
    assert_eq!(b.held(), 0, "an empty permit holds nothing");
    assert!(p.resize(3));
    assert!(p.resize(8));
    assert_eq!((b.held(), b.held_by(A)), (8, 8));
    assert!(!p.resize(11), "past the limit");
    assert_eq!(p.bytes(), 8, "a refused growth changes nothing");
    assert!(p.resize(2));
    assert_eq!(b.held(), 2);
    let mut s = p.sibling();
    assert!(s.resize(8));
    assert_eq!(b.held_by(A), 10);
    drop((p, s));
    assert_eq!(b.held(), 0);
}

#[test]
fn one_client_holds_at_most_its_share() {
    let b = BodyBudget::new(100, 10);
    let a = reserve(&b, A, 10).expect("A's share");
    assert!(reserve(&b, A, 1).is_none(), "A is at its share");
    let other = reserve(&b, B, 10).expect("B is not held back by A");
    // An IPv4-mapped address is the same client.
    let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
    assert!(reserve(&b, mapped, 1).is_none());
    drop(a);
    assert!(reserve(&b, mapped, 10).is_some());
    drop(other);
}

#[test]
fn lower_limits_refuse_new_reservations_only() {
    let b = BodyBudget::new(10, 10);
    let kept = reserve(&b, A, 8).unwrap();
    b.set_limits(4, 4);
    assert!(reserve(&b, B, 1).is_none());
    drop(kept);
    assert!(reserve(&b, B, 4).is_some());
}

proptest! {
    /// Whatever the interleaving of growth, shrinking and drops, what is held
    /// never passes either limit and equals the sum of the live permits.
    #[test]
    fn prop_held_is_the_sum_of_live_permits(
        ops in prop::collection::vec((0u8..3, any::<bool>(), 0u64..40), 0..64)
    ) {
        let b = BodyBudget::new(100, 60);
        let mut live: Vec<Permit> = Vec::new();
        for (op, second, n) in ops {
            let client = if second { B } else { A };
            match op {
                0 => live.push(b.permit(client)),
                1 if !live.is_empty() => {
                    let i = n as usize % live.len();
                    let _ = live[i].resize(n);
                }
                _ if !live.is_empty() => {
                    live.remove(n as usize % live.len());
                }
                _ => {}
            }
            let sum: u64 = live.iter().map(|p| p.bytes).sum();
            prop_assert_eq!(b.held(), sum);
            prop_assert!(sum <= 100);
            for c in [A, B] {
                let mine: u64 = live.iter().filter(|p| p.client == c).map(|p| p.bytes).sum();
                prop_assert_eq!(b.held_by(c), mine);
                prop_assert!(mine <= 60);
            }
        }
    }
}
