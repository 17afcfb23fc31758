//! A pod's interface counters, from `/proc/<pid>/net/dev` of one of its
//! processes: the view from inside the pod's network namespace, the same
//! numbers `ip -s link` shows there. (Which namespace a process is in:
//! `pmoas_discovery::netns::inode`.)

/// Counters of one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// Parses `/proc/net/dev`: two header lines, then
/// `name: rx_bytes rx_packets errs drop fifo frame compressed multicast tx_bytes tx_packets ...`.
/// Lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Interface> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let v: Vec<u64> = rest.split_whitespace().map(|f| f.parse().ok()).collect::<Option<_>>()?;
            (v.len() >= 10).then(|| Interface {
                name: name.trim().to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                tx_bytes: v[8],
                tx_packets: v[9],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
            lo:  123456     789    0    0    0     0          0         0   123456     789    0    0    0     0       0          0\n  \
            eth0: 9876543   6543    0    0    0     0          0         0  1234567    4321    0    0    0     0       0          0\n\
            garbage line\n  bad: 1 2 x\n";
        let ifs = parse(text);
        assert_eq!(
            ifs,
            vec![
                Interface { name: "lo".into(), rx_bytes: 123456, rx_packets: 789, tx_bytes: 123456, tx_packets: 789 },
                Interface {
                    name: "eth0".into(),
                    rx_bytes: 9876543,
                    rx_packets: 6543,
                    tx_bytes: 1234567,
                    tx_packets: 4321
                },
            ]
        );
    }
}
