"""The model core: loading, tiling, prompting, generation and backends. Imports no ROS."""
