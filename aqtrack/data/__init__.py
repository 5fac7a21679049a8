"""Datasets: the embedded synthetic default and user files (csv, parquet, npz, .ts), as
`aqtrack.data.dataset.ActionQualityData`; the file readers are imported only when a file is loaded."""
