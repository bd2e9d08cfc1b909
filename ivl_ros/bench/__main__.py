from ivl_ros.bench.command import main

raise SystemExit(main())
