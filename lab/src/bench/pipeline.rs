//! Metric pipelines of a bench run: how often pods are scraped, the rate window, the server's tick.

use super::report::{SETTLED_AFTER, SPAN};
use super::setup::MetricsPath;
use clap::ValueEnum;

/// Named pipelines (`lab bench --pipeline`), from the lab's fast loop to production-like ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "kebab-case")]
pub enum PipelinePreset {
    /// VictoriaMetrics scraping every 1 s, PromQL over 5 s, tick 1 s (the lab's default).
    Fast,
    /// VictoriaMetrics scraping every 15 s, PromQL `rate[1m]`, tick 10 s.
    Prod,
    /// vmagent scraping every 15 s and remote-writing, rates over 1 m in the server, tick 10 s.
    StreamProd,
    /// Envoy's load reports every 1 s (ORCA CPU riding along), no metrics store, tick 1 s.
    Lrs,
}

impl PipelinePreset {
    /// Every preset, in report order.
    pub const ALL: [PipelinePreset; 4] = [Self::Fast, Self::Prod, Self::StreamProd, Self::Lrs];

    /// Name used in reports, folders and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Prod => "prod",
            Self::StreamProd => "stream-prod",
            Self::Lrs => "lrs",
        }
    }

    /// The settings the preset stands for.
    pub fn pipeline(self) -> Pipeline {
        let (metrics, scrape, window, tick) = match self {
            Self::Fast => (MetricsPath::Pull, 1, 5, 1),
            Self::Prod => (MetricsPath::Pull, 15, 60, 10),
            Self::StreamProd => (MetricsPath::Stream, 15, 60, 10),
            Self::Lrs => (MetricsPath::Lrs, 1, 5, 1),
        };
        Pipeline {
            preset: Some(self),
            metrics,
            scrape_seconds: scrape,
            rate_window: window,
            tick_seconds: tick,
            report_seconds: 1,
        }
    }
}

/// How pod metrics reach adaptive-eds and how often it acts on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pipeline {
    /// The preset this came from (`None`: `--metrics` and `--rate-window` given one by one).
    pub preset: Option<PipelinePreset>,
    /// Sources: pull, stream, load reports or a pair.
    pub metrics: MetricsPath,
    /// Scrape interval of VictoriaMetrics or vmagent, seconds.
    pub scrape_seconds: u64,
    /// Window of the counter rates (PromQL `rate[..]` or remote-write `rate_window`), seconds.
    pub rate_window: u64,
    /// adaptive-eds `tick`, seconds.
    pub tick_seconds: u64,
    /// Envoy load-report interval, seconds (when load reports are a source).
    pub report_seconds: u64,
}

impl Pipeline {
    /// The fast pipeline with `--metrics` and `--rate-window` as given.
    pub fn custom(metrics: MetricsPath, rate_window: u64) -> Self {
        Self {
            preset: None,
            metrics,
            rate_window,
            ..PipelinePreset::Fast.pipeline()
        }
    }

    /// Name for reports and folders: the preset's, or the metrics path's.
    pub fn name(&self) -> &'static str {
        self.preset
            .map_or(self.metrics.name(), PipelinePreset::name)
    }

    /// Seconds after a scenario event from which the new steady state is measured: at least
    /// [`SETTLED_AFTER`], and for slow pipelines the recovery bound (two scrape
    /// intervals and a tick) plus one [`SPAN`] window, so the adaptation is not part of it.
    pub fn settled_after(&self) -> u64 {
        SETTLED_AFTER.max(2 * self.scrape_seconds + self.tick_seconds + SPAN)
    }

    /// Checks that a counter rate sees at least two scrapes.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.rate_window >= 2 * self.scrape_seconds,
            "the rate window ({} s) must hold at least two scrapes ({} s apart)",
            self.rate_window,
            self.scrape_seconds
        );
        Ok(())
    }

    /// How the report header names the sources (the error signal is added by the caller).
    pub fn describe(&self) -> String {
        let (scrape, window) = (self.scrape_seconds, self.rate_window);
        let mut parts = Vec::new();
        if self.metrics.pulls() {
            parts.push(format!(
                "pulled (VictoriaMetrics scrapes every {scrape} s, PromQL rate over {window}s)"
            ));
        }
        if self.metrics.streams() {
            parts.push(format!(
                "streamed (vmagent scrapes every {scrape} s and remote-writes; rates over {window}s in the server)"
            ));
        }
        if self.metrics.load_reports() {
            parts.push(format!(
                "Envoy load reports (LRS every {} s, ORCA cpu_utilization per endpoint when the fleet sends ORCA)",
                self.report_seconds
            ));
        }
        let preset = self.preset.map_or(String::new(), |preset| {
            format!("pipeline `{}`: ", preset.name())
        });
        format!(
            "{preset}{}, adaptive-eds tick {} s",
            parts.join(" + "),
            self.tick_seconds
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_map_onto_metrics_paths_and_intervals() {
        let fast = PipelinePreset::Fast.pipeline();
        assert_eq!(
            (
                fast.metrics,
                fast.scrape_seconds,
                fast.rate_window,
                fast.tick_seconds
            ),
            (MetricsPath::Pull, 1, 5, 1)
        );
        assert_eq!(
            Pipeline::custom(MetricsPath::Pull, 5),
            Pipeline {
                preset: None,
                ..fast
            }
        );
        let prod = PipelinePreset::Prod.pipeline();
        assert_eq!(
            (
                prod.metrics,
                prod.scrape_seconds,
                prod.rate_window,
                prod.tick_seconds
            ),
            (MetricsPath::Pull, 15, 60, 10)
        );
        let stream = PipelinePreset::StreamProd.pipeline();
        assert_eq!(
            (stream.metrics, stream.scrape_seconds),
            (MetricsPath::Stream, 15)
        );
        let lrs = PipelinePreset::Lrs.pipeline();
        assert_eq!((lrs.metrics, lrs.report_seconds), (MetricsPath::Lrs, 1));
        for preset in PipelinePreset::ALL {
            assert!(preset.pipeline().validate().is_ok(), "{preset:?}");
            assert_eq!(preset.pipeline().name(), preset.name());
        }
        assert!(prod.describe().contains("every 15 s, PromQL rate over 60s"));
        assert!(prod.describe().starts_with("pipeline `prod`"));
        assert_eq!(fast.settled_after(), 15);
        assert_eq!(prod.settled_after(), 45);
    }

    #[test]
    fn a_rate_window_shorter_than_two_scrapes_is_refused() {
        let pipeline = Pipeline {
            rate_window: 20,
            ..PipelinePreset::Prod.pipeline()
        };
        assert!(pipeline.validate().is_err());
    }
}
