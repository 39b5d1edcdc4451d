# Prints, as JSON, what Ruby Sidekiq's API sees: the jobs of a queue and the live processes.
# Usage: REDIS_URL=redis://... ruby inspect.rb QUEUE
require "json"
require "sidekiq"
require "sidekiq/api"

Sidekiq.configure_client { |config| config.redis = { url: ENV.fetch("REDIS_URL") } }

queue = Sidekiq::Queue.new(ARGV[0])
jobs = queue.map { |job| { "class" => job.klass, "args" => job.args, "jid" => job.jid,
                           "enqueued_at" => job.enqueued_at&.to_f } }
processes = Sidekiq::ProcessSet.new.map do |process|
  { "identity" => process.identity, "busy" => process["busy"], "concurrency" => process["concurrency"],
    "queues" => process["queues"] }
end
puts JSON.generate({ "size" => queue.size, "latency" => queue.latency, "jobs" => jobs,
                     "processes" => processes, "stats_enqueued" => Sidekiq::Stats.new.enqueued })
