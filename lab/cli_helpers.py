"""Small parsers for what weft's tools print (shared by tests and the benchmark)."""


def metric_value(text: str, series: str) -> float:
    """The value of one Prometheus series line, e.g. 'weft_x{network="a"}'; 0 if absent."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0
