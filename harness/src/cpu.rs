//! CPU time from `/proc`: of one process, of a process group, and of the whole machine.

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// The fields of `/proc/<pid>/stat` after the command name, which may hold spaces and
/// parentheses: they are counted after its last closing parenthesis, so `fields[0]` is field 3
/// (state) of stat(5).
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Field `number` of stat(5) (1-based, as the manual counts) as ticks.
fn ticks(fields: &[String], number: usize) -> Option<f64> {
    fields.get(number.checked_sub(3)?)?.parse().ok()
}

/// User plus system CPU seconds used so far by process `pid` (`"self"` for this process).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let fields = stat_fields(pid)?;
    // Fields 14 (utime) and 15 (stime).
    Some((ticks(&fields, 14)? + ticks(&fields, 15)?) / CLOCK_TICKS_PER_SECOND)
}

/// CPU seconds of every live process in process group `group`, each with the children it has
/// reaped (fields 14 to 17: utime, stime, cutime, cstime): a process started by
/// [`crate::Process`] and everything it forked. `None` when no process of the group is left.
pub fn group_cpu_seconds(group: u32) -> Option<f64> {
    let group = group.to_string();
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // A process may exit between listing and reading: it is skipped.
        let Some(fields) = stat_fields(pid) else {
            continue;
        };
        // Field 5 is the process group id.
        if fields.get(2) != Some(&group) {
            continue;
        }
        let spent: Option<f64> = (14..=17).map(|number| ticks(&fields, number)).sum();
        if let Some(spent) = spent {
            *total.get_or_insert(0.0) += spent / CLOCK_TICKS_PER_SECOND;
        }
    }
    total
}

/// CPU seconds the whole machine has been busy (every process, every core) since boot, from the
/// first line of `/proc/stat`: what other work on a shared machine took shows beside the stack's.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0.0);
    Some((ticks.iter().take(8).sum::<f64>() - idle) / CLOCK_TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_cpu_time() {
        let spent = cpu_seconds("self").unwrap();
        assert!((0.0..1e6).contains(&spent));
    }

    #[test]
    fn its_own_group_includes_itself() {
        let group = std::fs::read_to_string("/proc/self/stat").unwrap();
        let group: u32 = group
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        let own = cpu_seconds("self").unwrap();
        assert!(group_cpu_seconds(group).unwrap() >= own);
    }

    #[test]
    fn an_empty_group_has_no_time() {
        // Process group ids are pids; pid_max is at most 2^22 on Linux.
        assert_eq!(group_cpu_seconds(u32::MAX), None);
    }

    #[test]
    fn the_machine_has_been_busy() {
        assert!(machine_busy_seconds().unwrap() > 0.0);
    }
}
