from tradepulse.cli import main

main()
