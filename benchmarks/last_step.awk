# The largest step a job's metrics.csv has logged, as "step N" ("no step yet" before its first row): the column
# named step, whose place varies with what the run logs. Usage: awk -F, -f benchmarks/last_step.awk metrics.csv
NR == 1 { for (i = 1; i <= NF; i++) if ($i == "step") c = i; next }
c && $c != "" && $c + 0 >= m { m = $c + 0; seen = 1 }
END { print seen ? "step " m : "no step yet" }
