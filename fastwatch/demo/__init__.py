"""`fastwatch demo`: train on scikit-learn's digits while serving the dashboard. Sits above `record` and `view`."""
