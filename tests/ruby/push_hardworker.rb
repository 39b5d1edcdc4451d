# Pushes one HardWorker job with Ruby Sidekiq's own client and prints its jid.
# Usage: REDIS_URL=redis://... ruby push_hardworker.rb NAME COUNT
require "sidekiq"

Sidekiq.configure_client { |config| config.redis = { url: ENV.fetch("REDIS_URL") } }

class HardWorker
  include Sidekiq::Worker
end

puts HardWorker.perform_async(ARGV[0], Integer(ARGV[1]))
