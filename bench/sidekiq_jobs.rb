# Sidekiq's side of bench/run.py --peers (Debian's ruby-sidekiq 6.4.1), on $REDIS_URL.
#
# NoopJob and Sleep10Job count completions the way every peer's job does (bench/peer_apps/common.py):
# an in-process counter flushed with INCRBY pb:done every 5 ms by one thread, so counting adds no
# round trip per job. The log level is $PB_LOG_LEVEL (WARNING or INFO, like the Python peers; at
# INFO Sidekiq's job logger writes two lines per job, its default).
#
#   sidekiq -r ./bench/sidekiq_jobs.rb -c 10 -q default   # the worker
#   ruby bench/sidekiq_jobs.rb fill noop|sleep10 N         # push_bulk N jobs (1,000 per call)
#   ruby bench/sidekiq_jobs.rb enqueue N                   # time perform_async x N, push_bulk of N
require "json"
require "sidekiq"
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

Sidekiq.logger.level = ENV.fetch("PB_LOG_LEVEL", "WARNING").upcase == "INFO" ? Logger::INFO : Logger::WARN

module PbCounter
  DONE_KEY = "pb:done"
  @lock = Mutex.new
  @pending = 0
  @thread = nil

  def self.mark
    @lock.synchronize do
      @pending += 1
      @thread ||= Thread.new { flush_forever }
    end
  end

  def self.flush_forever
    redis = Redis.new(url: ENV.fetch("REDIS_URL"))
    loop do
      sleep 0.005
      n = @lock.synchronize { v = @pending; @pending = 0; v }
      redis.incrby(DONE_KEY, n) if n > 0
    end
  end
end

class NoopJob
  include Sidekiq::Worker
  def perform(x)
    PbCounter.mark
  end
end

class Sleep10Job
  include Sidekiq::Worker
  def perform(x)
    sleep 0.01
    PbCounter.mark
  end
end

JOBS = { "noop" => NoopJob, "sleep10" => Sleep10Job }.freeze

def push_bulk(klass, n)
  (0...n).each_slice(1000) { |s| Sidekiq::Client.push_bulk("class" => klass, "args" => s.map { |i| [i] }) }
end

def timed
  t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  yield
  Process.clock_gettime(Process::CLOCK_MONOTONIC) - t
end

if $0 == __FILE__
  cmd, *rest = ARGV
  case cmd
  when "fill"
    push_bulk(JOBS.fetch(rest[0]), Integer(rest[1]))
  when "enqueue"
    n = Integer(rest[0])
    50.times { |i| NoopJob.perform_async(i) } # warm-up: connection, code paths
    single = timed { n.times { |i| NoopJob.perform_async(i) } }
    bulk = timed { push_bulk(NoopJob, n) }
    puts JSON.generate(version: Sidekiq::VERSION, n: n, single: n / single, bulk: n / bulk)
  else
    abort "usage: ruby sidekiq_jobs.rb fill noop|sleep10 N | enqueue N"
  end
end
