//! The demo guests of `guests/demos/` run through `weft run` and print exactly what they should.

use weft_e2e::run_guest;

#[test]
fn ping_pong() {
    run_guest("ping_pong", &[])
        .assert_exit_code(0)
        .assert_stdout(
            "ping 0\n    pong 1\nping 2\n    pong 3\nping 4\n    pong 5\nping 6\n    pong 7\n\
         ping 8\n    pong 9\ngame over after 10 hits\n",
        );
}

#[test]
fn generators_yield_from_loops_and_from_deep_recursion() {
    run_guest("generator", &[])
        .assert_exit_code(0)
        .assert_stdout(
            "fibonacci: 0 1 1 2 3 5 8 13 21 34 55 89 144 233 377\n\
         tree in order: 10 20 30 35 40 50 60 65 70 80\n",
        );
}

#[test]
fn greenlet_library_interleaves_passes_values_and_returns_to_parents() {
    run_guest("greenlets", &[])
        .assert_exit_code(0)
        .assert_stdout(
            "interleaving:
12
56
34
gr1 dead: 1, gr2 dead: 0
passing values:
  summer: got 10, total 10
  summer: got 20, total 30
  summer: got 30, total 60
  summer: got 40, total 100
main: summer returned 100, dead: 1
parents:
  child: running with parent the middle greenlet, returning 40
  middle: the child's result came back to me: 40
main: middle returned 41
",
        );
}

#[test]
fn producers_and_consumers_share_a_bounded_queue() {
    run_guest("producer_consumer", &[])
        .assert_exit_code(0)
        .assert_stdout(
            "producer-A put 100 (producer-A#0)
producer-A put 101 (producer-A#1)
producer-B put 200 (producer-B#0)
  producer-B: queue full, yielding
consumer-X took 100 (sum 100)
consumer-Y took 101 (sum 101)
producer-A put 102 (producer-A#2)
producer-A put 103 (producer-A#3)
  producer-B: queue full, yielding
consumer-X took 200 (sum 300)
consumer-Y took 102 (sum 203)
producer-A put 104 (producer-A#4)
producer-A put 105 (producer-A#5)
  producer-B: queue full, yielding
consumer-X took 103 (sum 403)
consumer-Y took 104 (sum 307)
producer-A: done
producer-B put 201 (producer-B#1)
consumer-X took 105 (sum 508)
consumer-Y took 201 (sum 508)
producer-B put 202 (producer-B#2)
producer-B put 203 (producer-B#3)
consumer-X took 202 (sum 710)
consumer-Y took 203 (sum 711)
producer-B put 204 (producer-B#4)
producer-B put 205 (producer-B#5)
consumer-X took 204 (sum 914)
consumer-Y took 205 (sum 916)
producer-B: done
consumer-X: done, sum 914
consumer-Y: done, sum 916
scheduler: all tasks done; consumed 1830, produced 1830
",
        );
}
