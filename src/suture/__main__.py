from suture.cli import run

run()
