# plot.gp - one timeline chart per migration mode from vm-migrate's
# --timeline CSV (columns: mode,t_ms,units,rate,installed_frac,phase).
#   gnuplot -e "csv='timeline.csv'; outdir='.'" plot.gp
# writes outdir/timeline-<mode>.png: the guest's progress rate (work units
# per second, 50 ms window) over time, t = 0 when migration starts,
# coloured by phase (before, during, after migration), and on the right
# axis the fraction of guest RAM present on the destination (-1 in the
# CSV for samples taken on the source).
if (!exists("csv")) csv = 'timeline.csv'
if (!exists("outdir")) outdir = '.'
set datafile separator ','
set terminal pngcairo size 900,420 font ',10'
set xlabel 'time since migration start (ms)'
set ylabel 'guest progress (work units/s)'
set y2label 'guest RAM present on destination'
set y2range [0:1.05]
set y2tics 0.25
set ytics nomirror
set yrange [0:*]
set grid
set key top left
modes = 'stop-copy precopy postcopy hybrid'
do for [m in modes] {
  set output sprintf('%s/timeline-%s.png', outdir, m)
  set title sprintf('%s: 1 GiB KVM guest over loopback', m)
  plot csv using ((strcol(1) eq m && $6 == 0) ? $2 : NaN):4 with lines lw 1.5 lc rgb '#1f77b4' title 'before', \
       csv using ((strcol(1) eq m && $6 == 1) ? $2 : NaN):4 with lines lw 1.5 lc rgb '#d62728' title 'during migration', \
       csv using ((strcol(1) eq m && $6 == 2) ? $2 : NaN):4 with lines lw 1.5 lc rgb '#2ca02c' title 'after', \
       csv using ((strcol(1) eq m && $5 >= 0) ? $2 : NaN):5 axes x1y2 with lines dt 2 lc rgb '#555555' title 'RAM present (dest)'
}
